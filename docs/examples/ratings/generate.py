"""A small ratings-style log, in the shape public rating data sets ship (MovieLens' ``::``-separated
``users.dat``, ``movies.dat``, ``ratings.dat``): users with a gender, an age group, an occupation and a zip
code; items with a title and genres; timestamped 1–5 ratings from years before today. No friendships, no
posts by users, no dwell: what docs/your-logs.md maps onto the contract and runs through the pipeline.

    python docs/examples/ratings/generate.py --out data/ratings/export

Behind the ratings, a hidden model (so the pipeline has something to learn and the peers something to
beat): each occupation and age group leans to some genres, each user adds their own taste; an item has a
quality and 1–3 genres; users rate items they are drawn to (popularity × taste), and the rating grows with
quality, taste match and the user's own bias. Seeded: the same arguments give the same files.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import numpy as np

GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
#: MovieLens' occupation codes 0–20 (``users.dat`` carries the code; the names are in its README).
OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer",
    "programmer", "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer",
    "tradesman/craftsman", "unemployed", "writer",
)  # fmt: skip
AGE_GROUPS = (1, 18, 25, 35, 45, 50, 56)  # MovieLens: under 18, 18–24, 25–34, …, 56+
#: Title words per genre: the text encoder can tell genres apart from a title, as from a real one.
WORDS = {
    "Action": ("Fury", "Strike", "Bullet", "Chase"), "Adventure": ("Quest", "Island", "Treasure", "Voyage"),
    "Animation": ("Toon", "Little", "Magic", "Dragon"), "Children's": ("Puppy", "Friends", "Holiday", "Kid"),
    "Comedy": ("Wedding", "Party", "Crazy", "Roommates"), "Crime": ("Heist", "Mob", "Detective", "Alibi"),
    "Documentary": ("Story", "Inside", "Life", "Truth"), "Drama": ("Letters", "Winter", "Father", "River"),
    "Fantasy": ("Kingdom", "Sword", "Wizard", "Realm"), "Film-Noir": ("Shadow", "Night", "Dame", "Smoke"),
    "Horror": ("Blood", "Haunting", "Scream", "Dead"), "Musical": ("Song", "Dance", "Broadway", "Melody"),
    "Mystery": ("Secret", "Vanishing", "Clue", "Riddle"), "Romance": ("Love", "Kiss", "Paris", "Heart"),
    "Sci-Fi": ("Galaxy", "Robot", "Planet", "Star"), "Thriller": ("Hostage", "Panic", "Trap", "Edge"),
    "War": ("Battle", "Soldier", "Front", "Platoon"), "Western": ("Outlaw", "Frontier", "Sheriff", "Canyon"),
}  # fmt: skip


def generate(
    out: Path, users: int, items: int, ratings_per_user: float, start: dt.date, days: int, seed: int
) -> None:
    """Write ``users.dat``, ``movies.dat`` and ``ratings.dat`` under ``out``."""
    rng = np.random.default_rng(seed)
    n_g = len(GENRES)
    # Users: occupation and age group lean to genres; each user adds their own taste and a rating bias.
    occ_taste = rng.normal(0, 1.0, (len(OCCUPATIONS), n_g))
    age_taste = rng.normal(0, 0.7, (len(AGE_GROUPS), n_g))
    occupation = rng.integers(0, len(OCCUPATIONS), users)
    age = rng.choice(len(AGE_GROUPS), users, p=[0.04, 0.18, 0.35, 0.2, 0.1, 0.08, 0.05])
    taste = occ_taste[occupation] + age_taste[age] + rng.normal(0, 0.8, (users, n_g))  # (U, G)
    bias = rng.normal(0, 0.4, users)
    gender = np.where(rng.random(users) < 0.7, "M", "F")
    zips = [f"{z:05d}" for z in rng.integers(1000, 99999, users)]
    # Items: 1–3 genres, a quality, a popularity (how often people come across them).
    item_genres = [rng.choice(n_g, rng.integers(1, 4), replace=False) for _ in range(items)]
    multi_hot = np.zeros((items, n_g))
    for i, g in enumerate(item_genres):
        multi_hot[i, g] = 1.0 / len(g)
    quality = rng.normal(0, 1, items)
    popularity = rng.lognormal(0, 1.0, items) * np.exp(0.5 * quality)
    released = rng.integers(1930, start.year + 1, items)
    # Ratings: each user is active over part of the period; items drawn by popularity × taste.
    t_start = int(dt.datetime(start.year, start.month, start.day, tzinfo=dt.UTC).timestamp())
    first = rng.integers(0, days * 86400 * 3 // 4, users)  # when the user starts rating
    rows = []
    for u in range(users):
        affinity = multi_hot @ taste[u]  # (I,)
        weights = popularity * np.exp(1.5 * affinity)
        k = min(items, max(5, int(rng.poisson(ratings_per_user))))
        chosen = rng.choice(items, k, replace=False, p=weights / weights.sum())
        sessions = max(1, k // 15)
        starts = t_start + first[u] + np.sort(rng.integers(0, days * 86400 - first[u], sessions))
        when = starts[rng.integers(0, sessions, k)] + rng.integers(0, 3600, k)
        match = affinity[chosen] - affinity[chosen].mean()  # taste match among what the user watched
        score = 3.5 + 0.6 * quality[chosen] + 1.2 * match + bias[u]
        stars = np.clip(np.rint(score + rng.normal(0, 0.7, k)), 1, 5).astype(int)
        rows += [(u + 1, int(i) + 1, int(s), int(t)) for i, s, t in zip(chosen, stars, when, strict=True)]
    out.mkdir(parents=True, exist_ok=True)
    with (out / "users.dat").open("w") as f:
        for u in range(users):
            f.write(f"{u + 1}::{gender[u]}::{AGE_GROUPS[age[u]]}::{occupation[u]}::{zips[u]}\n")
    with (out / "movies.dat").open("w") as f:
        for i, g in enumerate(item_genres):
            words = [str(rng.choice(WORDS[GENRES[j]])) for j in g]
            title = f"The {' '.join(words)} {rng.choice(['Returns', 'Story', 'Affair', 'Night', 'II', ''])}"
            f.write(f"{i + 1}::{title.strip()} ({released[i]})::{'|'.join(GENRES[j] for j in g)}\n")
    rows.sort(key=lambda r: r[3])
    with (out / "ratings.dat").open("w") as f:
        f.writelines(f"{u}::{i}::{s}::{t}\n" for u, i, s, t in rows)
    sys.stdout.write(f"{users} users, {items} items, {len(rows)} ratings from {start}, {days} days → {out}\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="Folder for users.dat, movies.dat, ratings.dat.")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--items", type=int, default=400)
    p.add_argument("--ratings-per-user", type=float, default=40.0)
    p.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(1997, 9, 20))
    p.add_argument("--days", type=int, default=150, help="Length of the rating period.")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    generate(a.out, a.users, a.items, a.ratings_per_user, a.start, a.days, a.seed)


if __name__ == "__main__":
    main()
