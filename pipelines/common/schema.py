"""The interaction-log contract: one Arrow schema per raw table, defined once, documented in docs/schema.md.

Every stage reads and writes these tables; nothing else describes their columns. A real network's logs
(or a public data set) are mapped onto them outside this code base, then ingested unchanged.

Layout under a data directory ``D``::

    D/raw/<table>/...            anything matching the schema: Parquet, CSV or JSONL, any file layout
    D/clean/<table>/date=YYYY-MM-DD/part-*.parquet   event tables (posts, impressions, engagements)
    D/clean/<table>/part-*.parquet                   snapshot tables (users, friendships, blocks)
    D/quarantine/<table>/part-*.parquet              rejected rows: the raw columns as strings + reason
    D/truth/                     synthetic ground truth, read by evaluation only

Timestamps are UTC, millisecond precision. Entity ids (users, posts) are int64; event ids (impressions,
requests, engagement events) are strings, as real logging systems emit them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import pyarrow as pa

TS: Final = pa.timestamp("ms", tz="UTC")

GENDERS: Final = ("female", "male", "nonbinary", "unknown")
MODALITIES: Final = ("text", "image", "video")
VISIBILITIES: Final = ("public", "friends", "private")
ENGAGEMENT_TYPES: Final = ("view", "click", "like", "comment", "share", "hide", "report")
#: Engagement types that are explicit actions (``view`` only carries dwell time).
ACTION_TYPES: Final = ("click", "like", "comment", "share", "hide", "report")

MIN_AGE: Final = 13
MAX_AGE: Final = 120
#: A single view longer than this is a logging error (the app was left open), not dwell.
MAX_DWELL_MS: Final = 30 * 60 * 1000
MAX_TOPICS_PER_POST: Final = 8
MAX_TEXT_CHARS: Final = 20_000
#: The largest finite float32: a float column's value beyond it would be stored as infinity.
FLOAT32_MAX: Final = 3.4028234663852886e38

USERS: Final = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("age", pa.int16()),
        pa.field("gender", pa.string()),
        pa.field("city", pa.string()),
        pa.field("school", pa.string()),
        pa.field("work", pa.string()),
        pa.field("joined_at", TS, nullable=False),
    ]
)

FRIENDSHIPS: Final = pa.schema(
    [
        pa.field("user_a", pa.int64(), nullable=False),
        pa.field("user_b", pa.int64(), nullable=False),
        pa.field("created_at", TS, nullable=False),
    ]
)

BLOCKS: Final = pa.schema(
    [
        pa.field("blocker_id", pa.int64(), nullable=False),
        pa.field("blocked_id", pa.int64(), nullable=False),
        pa.field("created_at", TS, nullable=False),
    ]
)

POSTS: Final = pa.schema(
    [
        pa.field("post_id", pa.int64(), nullable=False),
        pa.field("author_id", pa.int64(), nullable=False),
        pa.field("created_at", TS, nullable=False),
        pa.field("modality", pa.string(), nullable=False),
        pa.field("text", pa.string()),
        pa.field("topics", pa.list_(pa.string())),
        pa.field("visibility", pa.string(), nullable=False),
        pa.field("deleted_at", TS),
        pa.field("media_duration_s", pa.float32()),
        pa.field("media_vector", pa.list_(pa.float32())),
    ]
)

IMPRESSIONS: Final = pa.schema(
    [
        pa.field("impression_id", pa.string(), nullable=False),
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("viewer_id", pa.int64(), nullable=False),
        pa.field("post_id", pa.int64(), nullable=False),
        pa.field("served_at", TS, nullable=False),
        pa.field("position", pa.int32(), nullable=False),
    ]
)

ENGAGEMENTS: Final = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("viewer_id", pa.int64(), nullable=False),
        pa.field("post_id", pa.int64(), nullable=False),
        pa.field("impression_id", pa.string()),
        pa.field("type", pa.string(), nullable=False),
        pa.field("at", TS, nullable=False),
        pa.field("dwell_ms", pa.int32()),
    ]
)


@dataclass(frozen=True)
class Table:
    """A raw table of the contract: its schema, identity and how it is partitioned on disk."""

    name: str
    schema: pa.Schema
    key: tuple[str, ...]
    #: Column whose UTC date partitions the clean table (``None``: a snapshot table, unpartitioned).
    time_column: str | None


TABLES: Final = {
    t.name: t
    for t in (
        Table("users", USERS, ("user_id",), None),
        Table("friendships", FRIENDSHIPS, ("user_a", "user_b"), None),
        Table("blocks", BLOCKS, ("blocker_id", "blocked_id"), None),
        Table("posts", POSTS, ("post_id",), "created_at"),
        Table("impressions", IMPRESSIONS, ("impression_id",), "served_at"),
        # event ids are the client's: unique per viewer, not across viewers (no one can shadow another's)
        Table("engagements", ENGAGEMENTS, ("viewer_id", "event_id"), "at"),
    )
}

#: Tables a network's logs may lack (no friend graph, no blocks): absent or empty folders are empty tables.
OPTIONAL_TABLES: Final = ("friendships", "blocks")

#: The order ingestion must follow: a table's references point only at tables before it.
INGEST_ORDER: Final = ("users", "friendships", "blocks", "posts", "impressions", "engagements")

#: Ground-truth probabilities per impression, written by the synthetic generator only.
TRUTH: Final = pa.schema(
    [
        pa.field("impression_id", pa.string(), nullable=False),
        pa.field("p_click", pa.float32()),
        pa.field("p_like", pa.float32()),
        pa.field("p_comment", pa.float32()),
        pa.field("p_share", pa.float32()),
        pa.field("p_hide", pa.float32()),
        pa.field("p_report", pa.float32()),
        pa.field("expected_dwell_ms", pa.float32()),
        pa.field("p_skip", pa.float32()),
        pa.field("served_at", TS, nullable=False),
    ]
)


def empty_table(schema: pa.Schema) -> pa.Table:
    """A zero-row table with ``schema``."""
    return schema.empty_table()
