"""Ingestion with deliberately broken rows: every rejected row is accounted for, with its reason and file;
corrupt or schema-less files fail the run cleanly, naming the file and column, and leave nothing behind."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipelines.common import schema
from pipelines.common.cli import DataError
from pipelines.common.config import IngestConfig
from pipelines.ingest.stage import run as ingest
from tests.conftest import copy_raw

pytestmark = pytest.mark.ray


def _first(d: Path, table: str) -> dict[str, object]:
    files = sorted((d / "raw" / table).rglob("*.parquet"))
    return pq.read_table(files[0]).slice(0, 1).to_pylist()[0]


def _iso(v: object) -> str:
    return v.isoformat() if hasattr(v, "isoformat") else str(v)


def test_broken_rows_are_quarantined_and_counted(raw_world: Path, tmp_path: Path) -> None:
    d = copy_raw(raw_world, tmp_path)
    before = json.loads((raw_world / "synth_summary.json").read_text())["rows"]
    user = _first(d, "users")
    # --- users.csv: 1 valid, 1 exact duplicate (cross-format), 1 conflicting duplicate, 4 invalid.
    rows = [
        {**user, "user_id": 999001},
        user,
        {**user, "city": "elsewhere"},
        {**user, "user_id": 999002, "gender": "robot"},
        {**user, "user_id": 999003, "age": 9},
        {**user, "user_id": 999004, "joined_at": "yesterday"},
        {**user, "user_id": ""},
    ]
    with (d / "raw" / "users" / "extra.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=schema.USERS.names)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r[k] is None else _iso(r[k])) for k in schema.USERS.names})
    # --- engagements.jsonl: 1 valid, 1 exact duplicate, 6 invalid (one line is not JSON at all).
    ev = _first(d, "engagements")
    ev_json = {k: _iso(v) if k == "at" else v for k, v in ev.items()}
    lines = [
        json.dumps({**ev_json, "event_id": "new-1"}),
        json.dumps(ev_json),
        "{this is not json",
        json.dumps({**ev_json, "event_id": "bad-2", "viewer_id": 42}),
        json.dumps({**ev_json, "event_id": "bad-3", "post_id": 42}),
        json.dumps({**ev_json, "event_id": "bad-4", "type": "poke"}),
        json.dumps({**ev_json, "event_id": "bad-5", "at": "2099-01-01T00:00:00Z"}),
        json.dumps({**ev_json, "event_id": "bad-6", "type": "view", "dwell_ms": -5}),
    ]
    (d / "raw" / "engagements" / "extra.jsonl").write_text("\n".join(lines) + "\n")

    summary = ingest(IngestConfig(), d)
    users, eng = summary["tables"]["users"], summary["tables"]["engagements"]
    for name, c in summary["tables"].items():
        assert c["read"] == c["accepted"] + c["quarantined"] + c["duplicates"], name
        assert sum(c["reasons"].values()) == c["quarantined"], name
    assert users["read"] == before["users"] + 7
    assert users["accepted"] == before["users"] + 1
    assert users["duplicates"] == 1
    assert users["reasons"] == {
        "bad_enum:gender": 1,
        "bad_type:joined_at": 1,
        "conflicting_duplicate": 1,
        "missing:user_id": 1,
        "out_of_range:age": 1,
    }
    assert eng["read"] == before["engagements"] + 8
    assert eng["accepted"] == before["engagements"] + 1
    assert eng["duplicates"] == 1
    assert eng["reasons"] == {
        "bad_json": 1,
        "bad_enum:type": 1,
        "in_future:at": 1,
        "out_of_range:dwell_ms": 1,
        "unknown_post:post_id": 1,
        "unknown_user:viewer_id": 1,
    }
    q = pads.dataset(str(d / "quarantine" / "engagements"), format="parquet").to_table().to_pandas()
    assert len(q) == 6
    assert set(q["source_file"].str.rsplit("/", n=1).str[-1]) == {"extra.jsonl"}
    assert json.dumps("{this is not json") in set(q["raw"])  # kept, as a JSON string
    qu = pads.dataset(str(d / "quarantine" / "users"), format="parquet").to_table().to_pandas()
    assert json.loads(qu.loc[qu["reason"] == "bad_enum:gender", "raw"].iloc[0])["gender"] == "robot"
    clean_users = pads.dataset(str(d / "clean" / "users"), format="parquet").to_table()
    assert 999001 in set(clean_users["user_id"].to_pylist())
    assert clean_users.num_rows == users["accepted"]
    assert not list(d.glob(".*")), "no staging folders left behind"


@pytest.mark.parametrize(
    ("table", "name", "content", "message"),
    [
        ("posts", "broken.parquet", b"PAR1 this is not parquet", r"broken\.parquet: not a readable Parquet file"),
        ("impressions", "no_post.csv", b"impression_id,request_id,viewer_id,served_at,position\n1,2,3,4,5\n",
         r"no_post\.csv: missing required column 'post_id' of table 'impressions'"),
        ("engagements", "garbage.jsonl", b"\x00\x01 not json\n", r"garbage\.jsonl: first line is not JSON"),
        ("users", "notes.txt", b"hello", r"notes\.txt: unsupported file type"),
    ],
)
def test_corrupt_files_fail_cleanly(
    raw_world: Path, tmp_path: Path, table: str, name: str, content: bytes, message: str
) -> None:
    d = copy_raw(raw_world, tmp_path)
    (d / "clean").mkdir()
    (d / "clean" / "previous-run.txt").write_text("kept")
    (d / "raw" / table / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        ingest(IngestConfig(), d)
    assert (d / "clean" / "previous-run.txt").read_text() == "kept"
    assert not (d / "quarantine").exists()
    assert not list(d.glob(".*"))


def test_a_missing_required_table_is_named(raw_world: Path, tmp_path: Path) -> None:
    d = copy_raw(raw_world, tmp_path)
    shutil.rmtree(d / "raw" / "posts")
    with pytest.raises(DataError, match=r"raw/posts: missing; the posts table is required"):
        ingest(IngestConfig(), d)


@pytest.mark.parametrize("how", ["absent", "empty folder"])
def test_optional_tables_may_be_absent_or_empty(raw_world: Path, tmp_path: Path, how: str) -> None:
    d = copy_raw(raw_world, tmp_path)
    for table in schema.OPTIONAL_TABLES:
        shutil.rmtree(d / "raw" / table)
        if how == "empty folder":
            (d / "raw" / table).mkdir()
    summary = ingest(IngestConfig(), d)
    for table in schema.OPTIONAL_TABLES:
        assert summary["tables"][table]["read"] == 0
        assert pq.read_table(d / "clean" / table).num_rows == 0  # an empty table, with its schema
    assert summary["tables"]["engagements"]["accepted"] > 0


def test_a_table_mostly_quarantined_fails_naming_the_reason(raw_world: Path, tmp_path: Path) -> None:
    """Logs older than ingest.min_timestamp: every row too_old. Ingest exits with the reason (after writing
    the quarantine, so it can be read) instead of handing an empty table to the next stage."""
    import datetime as dt

    d = copy_raw(raw_world, tmp_path)
    late = IngestConfig(min_timestamp=dt.datetime(2100, 1, 1, tzinfo=dt.UTC), max_future_s=10**10)
    with pytest.raises(DataError, match=r"users: .* rows quarantined \(too_old:joined_at") as e:
        ingest(late, d)
    assert "ingest.max_quarantine_fraction" in str(e.value)
    assert (d / "quarantine" / "users").is_dir()
    # under the threshold it passes: the tiny world's own share of broken rows is small
    ingest(IngestConfig(max_quarantine_fraction=1.0, min_timestamp=late.min_timestamp, max_future_s=10**10), d)


def test_dry_run_counts_and_writes_nothing(raw_world: Path, tmp_path: Path) -> None:
    d = copy_raw(raw_world, tmp_path)
    before = sorted(p.relative_to(d) for p in d.rglob("*"))
    summary = ingest(IngestConfig(), d, dry_run=True)
    assert summary["totals"]["accepted"] > 0
    assert sorted(p.relative_to(d) for p in d.rglob("*")) == before


def test_quarantined_raw_is_standard_json(raw_world: Path, tmp_path: Path) -> None:
    d = copy_raw(raw_world, tmp_path)
    rows = [
        {"user_id": 1, "post_id": 1, "viewer_id": 1, "event_id": "nan", "type": "view", "at": "x", "dwell_ms": float("nan")},
    ]
    with (d / "raw" / "engagements" / "nan.jsonl").open("w") as fh:
        fh.write(json.dumps(rows[0]) + "\n")  # Python writes NaN, as many tools do
        fh.write("{broken\n")
    with (d / "raw" / "users" / "nan.csv").open("w") as fh:
        fh.write("user_id,age,gender,joined_at\n7,,x,not-a-time\n")
    ingest(IngestConfig(max_quarantine_fraction=1.0), d)
    quarantined = pq.read_table(d / "quarantine").to_pylist()
    assert len(quarantined) >= 3

    def strict(text: str) -> object:
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in a quarantined row: {text}"))

    for row in quarantined:
        strict(row["raw"])


def test_a_small_table_is_not_spread_over_many_files(raw_world: Path, tmp_path: Path) -> None:
    d = copy_raw(raw_world, tmp_path)
    summary = ingest(IngestConfig(), d)
    for table in ("posts", "impressions", "engagements"):
        days = {p.parent.name for p in (d / "clean" / table).rglob("*.parquet")}
        files = list((d / "clean" / table).rglob("*.parquet"))
        # the tiny world's tables are far under rows_per_file: one file per table and day
        assert len(files) == len(days), (table, len(files), len(days), summary["tables"][table]["accepted"])
