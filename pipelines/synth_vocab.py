"""Topic vocabularies for synthetic post text: real words, so a pretrained text encoder can recover topic."""

from __future__ import annotations

from typing import Final

TOPIC_WORDS: Final[dict[str, tuple[str, ...]]] = {
    "sports": ("football", "goal", "playoffs", "coach", "stadium", "quarterback", "season", "league",
               "basketball", "touchdown", "referee", "championship"),
    "music": ("concert", "album", "guitar", "band", "playlist", "singer", "drummer", "vinyl", "festival",
              "lyrics", "chorus", "tour"),
    "movies": ("film", "trailer", "director", "cinema", "sequel", "actor", "screenplay", "popcorn",
               "premiere", "oscars", "documentary", "box office"),
    "politics": ("election", "senator", "vote", "congress", "policy", "campaign", "debate", "ballot",
                 "governor", "legislation", "mayor", "polls"),
    "tech": ("smartphone", "software", "startup", "laptop", "app update", "chip", "AI model", "cloud",
             "programming", "gadget", "battery life", "open source"),
    "food": ("recipe", "pasta", "barbecue", "bakery", "tacos", "brunch", "chef", "spicy", "dessert",
             "grill", "sourdough", "ramen"),
    "travel": ("flight", "beach", "hotel", "passport", "road trip", "mountains", "airport", "vacation",
               "hiking trail", "national park", "luggage", "island"),
    "fashion": ("outfit", "sneakers", "jacket", "runway", "designer", "dress", "thrift store", "style",
                "jeans", "handbag", "makeup", "boots"),
    "gaming": ("console", "level", "multiplayer", "speedrun", "controller", "boss fight", "esports",
               "quest", "loot", "patch notes", "headset", "ranked match"),
    "science": ("telescope", "experiment", "physics", "galaxy", "laboratory", "fossil", "chemistry",
                "research paper", "rocket launch", "microscope", "genome", "climate data"),
    "health": ("doctor", "vaccine", "sleep", "nutrition", "therapy", "hospital", "vitamins",
               "mental health", "checkup", "allergies", "flu season", "meditation"),
    "fitness": ("workout", "marathon", "gym", "yoga", "squats", "cycling", "personal best", "protein",
                "treadmill", "stretching", "deadlift", "running shoes"),
    "pets": ("puppy", "kitten", "dog park", "vet", "adopted", "leash", "cat tree", "fetch",
             "rescue dog", "aquarium", "parrot", "hamster"),
    "parenting": ("toddler", "daycare", "bedtime", "school pickup", "diapers", "homework", "newborn",
                  "playground", "family dinner", "first steps", "stroller", "birthday party"),
    "finance": ("stocks", "mortgage", "budget", "savings", "interest rates", "crypto", "taxes",
                "retirement", "paycheck", "investing", "inflation", "credit card"),
    "cars": ("engine", "electric car", "road test", "horsepower", "mechanic", "pickup truck",
             "oil change", "dealership", "sedan", "tires", "hybrid", "car wash"),
    "art": ("painting", "museum", "sketch", "gallery", "sculpture", "canvas", "watercolor", "mural",
            "exhibition", "pottery", "portrait", "street art"),
    "books": ("novel", "library", "author", "chapter", "book club", "bestseller", "poetry", "memoir",
              "paperback", "reading list", "fantasy series", "bookstore"),
    "weather": ("storm", "snow", "heatwave", "forecast", "rain", "thunder", "sunshine", "tornado",
                "humidity", "frost", "hurricane", "clear skies"),
    "local": ("city council", "neighborhood", "farmers market", "traffic", "new restaurant", "downtown",
              "road closure", "community center", "local school", "street fair", "bus route", "park"),
}

TOPICS: Final = tuple(TOPIC_WORDS)

OPENERS: Final = (
    "Can't stop thinking about the",
    "Anyone else excited about the",
    "Loving this",
    "Quick thoughts on the",
    "Today was all about the",
    "Honestly the best",
    "Not sure how I feel about the",
    "Finally tried the",
    "Big news about the",
    "Throwback to that",
)
LINKERS: Final = ("and the", "plus", "with the", "then the", "also", "and honestly the")
CLOSERS: Final = ("!", ".", " this week.", " tonight!", " again...", " 🙌", " — thoughts?", " lol.")
