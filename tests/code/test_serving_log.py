"""The serving log's writer thread: durable appends, group commit, failures surfaced."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from serve.log import ServingLog


def impression(i: int, ms: int = 1_700_000_000_000) -> dict:
    return {
        "kind": "impression",
        "id": f"r:{i}",
        "impression_id": f"r:{i}",
        "request_id": "r",
        "viewer_id": 1,
        "post_id": i,
        "served_at_ms": ms,
        "position": i,
    }


def rows(root: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(root.rglob("*.jsonl")) for line in p.read_text().splitlines()]


def test_append_returns_once_the_records_are_on_disk(tmp_path: Path) -> None:
    log = ServingLog(tmp_path, "w")
    log.append([impression(0), impression(1, ms=1_700_000_000_000 + 86_400_000)])
    got = rows(tmp_path / "raw" / "impressions")
    assert [r["impression_id"] for r in got] == ["r:0", "r:1"]
    days = sorted(p.parent.name for p in (tmp_path / "raw" / "impressions").rglob("*.jsonl"))
    assert days == ["date=2023-11-14", "date=2023-11-15"]  # one file per UTC day
    assert got[0]["served_at"] == "2023-11-14T22:13:20.000+00:00"
    log.close()


def test_concurrent_submissions_all_land_once(tmp_path: Path) -> None:
    log = ServingLog(tmp_path, "w")
    threads = [
        threading.Thread(target=lambda k=k: [log.submit([impression(k * 100 + j)]) for j in range(100)])
        for k in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.flush()
    ids = [r["impression_id"] for r in rows(tmp_path / "raw")]
    assert sorted(ids) == sorted(f"r:{i}" for i in range(800))
    log.close()
    assert not log.alive()


def test_a_failed_write_is_raised_to_append_and_counted(tmp_path: Path) -> None:
    (tmp_path / "raw").write_text("not a directory")  # every write fails
    log = ServingLog(tmp_path, "w")
    with pytest.raises(NotADirectoryError):
        log.append([impression(0)])
    done = log.submit([impression(1), impression(2)])
    assert isinstance(done.exception(timeout=10), NotADirectoryError)
    assert log.failed == 3
    assert log.alive()  # the writer keeps going
