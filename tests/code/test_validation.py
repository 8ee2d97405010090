"""Row-level validation: every rule rejects the row it should, with a reason, and keeps the rest."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from pipelines.common import schema
from pipelines.ingest.rules import (
    References,
    Rules,
    dedup_group,
    hash_strings,
    impression_keys,
    select_status,
    validate_batch,
)

RULES = Rules(min_ts_ms=946684800000, max_ts_ms=1_900_000_000_000)
REFS = References(
    user_ids=np.array([1, 2, 3], dtype=np.int64),
    post_ids=np.array([10, 11], dtype=np.int64),
    post_created_ms=np.array([1_700_000_000_000, 1_700_000_000_000], dtype=np.int64),
    impression_hashes=np.sort(hash_strings(["i1"])),
    impression_owners=np.sort(impression_keys(["i1"], [1], [10])),  # i1: viewer 1 was shown post 10
)


def _reasons(out: pa.Table) -> list[str | None]:
    return out.column("_reason").to_pylist()


def test_users_csv_strings_are_typed_and_checked() -> None:
    batch = pa.table(
        {
            "user_id": ["1", "2", "x", "4", "5"],
            "age": ["30", "7", "40", "", "41.5"],
            "gender": ["female", "male", "robot", None, "male"],
            "city": ["a", "b", "c", "d", "e"],
            "joined_at": ["2024-01-01T00:00:00Z", "2024-01-01", "2024-01-01", "1990-01-01", "2024-01-01"],
            "path": ["f.csv"] * 5,
        }
    )
    out = validate_batch(batch, schema.TABLES["users"], "csv", REFS, RULES)
    r = _reasons(out)
    assert r[0] is None
    assert r[1] == "out_of_range:age"
    assert r[2] is not None
    assert "bad_type:user_id" in r[2]
    assert "missing:user_id" not in r[2]
    assert "bad_enum:gender" in r[2]
    assert r[3] == "too_old:joined_at"
    assert r[4] == "bad_type:age"
    assert out.column("age").to_pylist()[0] == 30
    raw = json.loads(out.column("_raw").to_pylist()[2])
    assert raw["user_id"] == "x"  # the quarantined row keeps what was read
    assert out.column("_raw").to_pylist()[0] is None


def test_jsonl_unparsable_lines_and_missing_keys() -> None:
    lines = [
        json.dumps({"user_a": 1, "user_b": 2, "created_at": "2024-02-01T00:00:00Z"}),
        "{not json",
        json.dumps({"user_a": 3, "created_at": "2024-02-01T00:00:00Z"}),
        json.dumps({"user_a": 2, "user_b": 2, "created_at": "2024-02-01T00:00:00Z"}),
        json.dumps({"user_a": 3, "user_b": 99, "created_at": "2024-02-01T00:00:00Z"}),
        json.dumps([1, 2]),
    ]
    out = validate_batch(pa.table({"text": lines}), schema.TABLES["friendships"], "jsonl", REFS, RULES)
    r = _reasons(out)
    assert r[0] is None
    assert r[1] == "bad_json"
    assert r[2] == "missing:user_b"
    assert r[3] == "self_reference"
    assert r[4] == "unknown_user:user_b"
    assert r[5] == "bad_json"
    assert json.loads(out.column("_raw").to_pylist()[1]) == "{not json"  # kept, as a JSON string


def test_friendships_are_canonicalized_smaller_first() -> None:
    line = json.dumps({"user_a": 3, "user_b": 1, "created_at": "2024-02-01T00:00:00Z"})
    out = validate_batch(pa.table({"text": [line]}), schema.TABLES["friendships"], "jsonl", REFS, RULES)
    assert (out.column("user_a")[0].as_py(), out.column("user_b")[0].as_py()) == (1, 3)


def test_engagement_rules() -> None:
    t = "2024-01-01T00:00:00Z"
    before = "2023-01-01T00:00:00Z"
    batch = pa.table(
        {
            "event_id": ["e1", "e2", "e3", "e4", "e5", "e6", "e7"],
            "viewer_id": [1, 1, 9, 1, 1, 1, 1],
            "post_id": [10, 10, 10, 10, 12, 10, 10],
            "impression_id": ["i1", None, None, "i9", None, None, None],
            "type": ["view", "like", "like", "like", "like", "poke", "view"],
            "at": [t, t, t, t, t, t, before],
            "dwell_ms": [1200, None, None, None, None, None, None],
        }
    )
    out = validate_batch(batch, schema.TABLES["engagements"], "parquet", REFS, RULES)
    r = _reasons(out)
    assert r[0] is None
    assert r[1] is None
    assert r[2] == "unknown_user:viewer_id"
    assert r[3] == "unknown_impression:impression_id"
    assert r[4] == "unknown_post:post_id"
    assert r[5] == "bad_enum:type"
    assert r[6] is not None
    assert "before_post_created" in r[6]
    assert "missing:dwell_ms" in r[6]


def test_an_engagement_must_cite_an_impression_of_its_own_viewer_and_post() -> None:
    t = "2024-01-01T00:00:00Z"
    batch = pa.table(
        {
            "event_id": ["own", "other-viewer", "other-post"],
            "viewer_id": [1, 2, 1],
            "post_id": [10, 10, 11],
            "impression_id": ["i1", "i1", "i1"],
            "type": ["like", "like", "like"],
            "at": [t, t, t],
            "dwell_ms": [None, None, None],
        }
    )
    out = validate_batch(batch, schema.TABLES["engagements"], "parquet", REFS, RULES)
    assert _reasons(out) == [None, "impression_mismatch", "impression_mismatch"]


def test_floats_must_be_finite_as_float32() -> None:
    batch = pa.table(
        {
            "post_id": [1, 2],
            "author_id": [1, 1],
            "created_at": ["2024-01-01T00:00:00Z"] * 2,
            "modality": ["image", "video"],
            "text": ["a", "b"],
            "visibility": ["public", "public"],
            "media_vector": [[1.0, 1e39], [1.0, 2.0]],
            "media_duration_s": [None, 1e39],
        }
    )
    out = validate_batch(batch, schema.TABLES["posts"], "parquet", REFS, RULES)
    assert _reasons(out) == ["bad_type:media_vector", "bad_type:media_duration_s; missing:media_duration_s"]


def test_posts_lists_parse_from_text_and_video_needs_duration() -> None:
    t = "2024-01-01T00:00:00Z"
    batch = pa.table(
        {
            "post_id": ["1", "2", "3"],
            "author_id": ["1", "2", "3"],
            "created_at": [t, t, t],
            "modality": ["image", "video", "text"],
            "text": ["hi", "", "x"],
            "topics": ['["sports", "music"]', "food|travel", "[1, 2"],
            "visibility": ["public", "friends", "private"],
            "media_vector": ["[0.5, 1.0]", None, None],
        }
    )
    out = validate_batch(batch, schema.TABLES["posts"], "csv", REFS, RULES)
    r = _reasons(out)
    assert r[0] is None
    assert r[1] == "missing:media_duration_s"
    assert r[2] == "bad_type:topics"
    assert out.column("topics").to_pylist()[:2] == [["sports", "music"], ["food", "travel"]]
    assert out.column("media_vector").to_pylist()[0] == [0.5, 1.0]


def _users(ids: list[int], cities: list[str]) -> pa.Table:
    n = len(ids)
    batch = pa.table(
        {
            "user_id": ids,
            "age": [30] * n,
            "gender": ["female"] * n,
            "city": cities,
            "joined_at": ["2024-01-01T00:00:00Z"] * n,
        }
    )
    return validate_batch(batch, schema.TABLES["users"], "parquet", REFS, RULES)


def test_dedup_separates_exact_copies_from_conflicts_independent_of_order() -> None:
    v = _users([1, 1, 1, 2, 3, 3], ["a", "a", "b", "c", "d", "d"])
    first = dedup_group(v, ("user_id",))
    second = dedup_group(v.take(pa.array([5, 4, 3, 2, 1, 0])), ("user_id",))
    for decided in (first, second):
        status = decided.column("_status").to_pylist()
        assert status.count("accepted") == 3
        assert status.count("duplicate") == 2
        assert status.count("quarantined") == 1
        assert select_status(decided, "quarantined").column("_reason").to_pylist() == [
            "conflicting_duplicate"
        ]

    def kept(d: pa.Table) -> list[tuple[int, str]]:
        acc = select_status(d, "accepted")
        return sorted(zip(acc.column("user_id").to_pylist(), acc.column("city").to_pylist(), strict=True))

    assert kept(first) == kept(second)


def test_rejected_rows_stay_quarantined_through_dedup() -> None:
    batch = pa.table(
        {
            "user_id": [1, 1],
            "age": [30, 5],
            "gender": ["male", "male"],
            "city": ["a", "a"],
            "joined_at": ["2024-01-01T00:00:00Z"] * 2,
        }
    )
    v = validate_batch(batch, schema.TABLES["users"], "parquet", REFS, RULES)
    decided = dedup_group(v, ("user_id",))
    assert sorted(decided.column("_status").to_pylist()) == ["accepted", "quarantined"]
    assert select_status(decided, "quarantined").column("_reason").to_pylist() == ["out_of_range:age"]
