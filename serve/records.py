"""The typed records that flow through serving, from a request to the serving log.

::

    GET /feed   retrieval ─► Candidates (serve.retrieval)
                ranking ───► ScoreRequest ─► Scorer, here or in the Ranker deployment ─► Scores
                re-ranking ► Slate (serve.reranking) ─► the kept ranked list (serve.feed.Ranked)
                page ──────► FeedResult: FeedItem s (the response), ServedImpression s (to log), timings
    POST /events  ClientEvent s ─► Engagement / ReportedImpression ─► EventsAccepted
    POST /posts   PostDraft ─► NewPost ─► PostCreated

What the serving log writes and the online stores apply is a :data:`LogRecord`, a JSON-able dict with a
``kind``, a unique ``id`` and times as ``<name>_ms`` (the log reads them back from its JSON lines as
dicts); the typed log records become one with ``log_record()``. Columns of numbers (feature rows, per-task
probabilities) stay ``dict[str, np.ndarray]``: that is the model's input and output format.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np

#: One record of the serving log and of ``OnlineStore.apply``: ``kind`` (impression, engagement, post),
#: ``id`` (applying a record twice is a no-op), ``<time>_ms`` (epoch milliseconds) and the contract's columns.
LogRecord = dict[str, Any]


# ------------------------------------------------------------------------------------------ ranking
@dataclass(frozen=True, slots=True)
class ScoreRequest:
    """One feed request's candidates, to the ranker (ids, not features: a few KB across a handle)."""

    viewer: int
    post_ids: np.ndarray  # (N,) int64
    now_s: float  # serving time, epoch seconds
    arm: str  # the arm asked for: champion or challenger


@dataclass(frozen=True, slots=True)
class Scores:
    """The ranker's answer to one :class:`ScoreRequest`, aligned with its ``post_ids``."""

    probs: dict[str, np.ndarray]  # task → (N,) float32; dwell in ms
    signals: dict[str, np.ndarray]  # explanation column (serve.ranking.SIGNALS) → (N,)
    arm: str  # the arm that scored (the champion when the challenger is not loaded)
    version: str  # its registered model version
    #: ``features`` (this request's feature assembly) and ``forward`` (the forward it shared with the
    #: requests batched with it), in ms: the ranking stage's parts in ``Server-Timing``.
    timings_ms: dict[str, float] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- feed
@dataclass(frozen=True, slots=True)
class ServedModel:
    """Which model ordered a feed (``version`` None: nothing ranked it)."""

    name: str
    arm: str  # champion, challenger or chronological
    version: str | None
    retrieval_arm: str = "suggestions"  # or friends_only: the out-of-network holdout


@dataclass(frozen=True, slots=True)
class FeedItem:
    """One ranked post of a page, as ``serve.api.Item`` returns it."""

    post_id: int
    author_id: int
    created_at: str  # ISO 8601 UTC
    modality: str
    text: str  # a snippet
    topics: list[str]  # the post's topics in the model's vocabulary
    score: float  # value-model score after re-ranking
    value: float | None  # the value model's score before re-ranking; None in a fallback feed
    probabilities: dict[str, float] | None  # per task but dwell; None in a fallback feed
    expected_dwell_s: float | None
    why: str
    tags: list[str]  # what re-ranking did to it (fresh, seen, exploration, …)
    position: int  # in the whole ranked list, not the page
    impression_id: str
    source: str = "friends"  # friends (in-network) or suggested (out-of-network, the retriever's index)


# ----------------------------------------------------------------------------------------- the log
@dataclass(frozen=True, slots=True)
class Impression:
    """One post shown at one position of one feed request (log kind ``impression``)."""

    impression_id: str
    request_id: str
    viewer_id: int
    post_id: int
    served_at_ms: int
    position: int

    def _common(self) -> LogRecord:
        return {
            "kind": "impression",
            "id": self.impression_id,
            "impression_id": self.impression_id,
            "request_id": self.request_id,
            "viewer_id": self.viewer_id,
            "post_id": self.post_id,
            "served_at_ms": self.served_at_ms,
            "position": self.position,
        }


@dataclass(frozen=True, slots=True)
class ServedImpression(Impression):
    """An impression the feed served, with the arm and version that ranked it."""

    arm: str
    model_version: str | None
    fallback: bool
    retrieval_arm: str = "suggestions"
    suggested: bool = False  # a stranger's post from the retriever's index

    def log_record(self) -> LogRecord:
        return {
            **self._common(),
            "arm": self.arm,
            "model_version": self.model_version,
            "fallback": self.fallback,
            "retrieval_arm": self.retrieval_arm,
            "suggested": self.suggested,
        }


@dataclass(frozen=True, slots=True)
class ReportedImpression(Impression):
    """An impression the client reported (``POST /events`` with type ``impression``)."""

    def log_record(self) -> LogRecord:
        return {**self._common(), "source": "client"}


def engagement_id(viewer_id: int, event_id: str) -> str:
    """An engagement's record id: event ids are the client's, so they are unique per viewer only (one
    viewer's id never shadows another's)."""
    return f"evt:{viewer_id}:{event_id}"


@dataclass(frozen=True, slots=True)
class Engagement:
    """A client event other than an impression (log kind ``engagement``)."""

    event_id: str
    viewer_id: int
    post_id: int
    impression_id: str | None
    type: str  # view, click, like, comment, share, hide, report
    at_ms: int
    dwell_ms: int | None  # views only

    def log_record(self) -> LogRecord:
        return {
            "kind": "engagement",
            "id": engagement_id(self.viewer_id, self.event_id),
            "event_id": self.event_id,
            "viewer_id": self.viewer_id,
            "post_id": self.post_id,
            "impression_id": self.impression_id,
            "type": self.type,
            "at_ms": self.at_ms,
            "dwell_ms": self.dwell_ms,
        }


@dataclass(frozen=True, slots=True)
class NewPost:
    """A post created through the API (log kind ``post``; ``text_emb`` is its text embedding)."""

    post_id: int
    author_id: int
    created_at_ms: int
    modality: str
    text: str | None
    topics: list[str]
    visibility: str
    media_duration_s: float | None
    media_vector: list[float] | None
    text_emb: list[float]

    def log_record(self) -> LogRecord:
        return {
            "kind": "post",
            "id": f"post:{self.post_id}",
            "post_id": self.post_id,
            "author_id": self.author_id,
            "created_at_ms": self.created_at_ms,
            "modality": self.modality,
            "text": self.text,
            "topics": self.topics,
            "visibility": self.visibility,
            "deleted_at": None,
            "media_duration_s": self.media_duration_s,
            "media_vector": self.media_vector,
            "text_emb": self.text_emb,
        }


#: The typed records that become :data:`LogRecord` s (what ``FeedService.publish`` takes).
LogEntry = ServedImpression | ReportedImpression | Engagement | NewPost


@dataclass(frozen=True, slots=True)
class FeedResult:
    """One page of a feed: the response body, the impressions to log once it is sent, stage timings."""

    user_id: int
    request_id: str
    served_at: str  # ISO 8601 UTC, milliseconds
    items: list[FeedItem]
    next_cursor: str | None
    model: ServedModel
    fallback: bool  # ranking failed or was too slow: newest first
    fallback_reason: str | None
    impressions: list[ServedImpression]
    timings_ms: dict[str, float]  # stage → ms (first pages only; a cursor's page ranks nothing)

    def response(self) -> dict[str, Any]:
        """The JSON body of ``GET /feed`` (``serve.api.FeedResponse``)."""
        return {
            "user_id": self.user_id,
            "request_id": self.request_id,
            "served_at": self.served_at,
            "items": [_shallow(it) for it in self.items],
            "next_cursor": self.next_cursor,
            "model": _shallow(self.model),
            "fallback": self.fallback,
            "fallback_reason": self.fallback_reason,
        }


def _shallow(record: Any) -> dict[str, Any]:
    """A flat record's fields as a dict (``dataclasses.asdict`` deep-copies every value: ~0.4 ms a page)."""
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


# -------------------------------------------------------------------------------------------- writes
@dataclass(frozen=True, slots=True)
class ClientEvent:
    """One event of ``POST /events``, validated for shape (``serve.api.EventIn``), not yet for content."""

    type: str
    post_id: int
    at: dt.datetime | None = None  # None: now
    impression_id: str | None = None
    request_id: str | None = None
    position: int | None = None
    dwell_ms: int | None = None
    event_id: str | None = None  # idempotency key

    def at_s(self, now_s: float) -> float:
        return self.at.timestamp() if self.at is not None else now_s


@dataclass(frozen=True, slots=True)
class EventsAccepted:
    """The answer to an accepted ``POST /events``: every event stored, with its id."""

    accepted: int  # stored by this request
    event_ids: list[str]  # every event's, in request order
    duplicates: list[str]  # ids stored before: acknowledged, not stored again


@dataclass(frozen=True, slots=True)
class PostDraft:
    """The body of ``POST /posts`` (``serve.api.PostIn``)."""

    text: str | None
    modality: str = "text"
    topics: list[str] = dataclasses.field(default_factory=list)
    visibility: str = "friends"
    media_duration_s: float | None = None
    media_vector: list[float] | None = None


@dataclass(frozen=True, slots=True)
class PostCreated:
    post_id: int
    created_at: str  # ISO 8601 UTC
