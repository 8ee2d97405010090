"""The online simulation against the deployed feed: simulated users of the tiny world read their feeds
over HTTP, their events are accepted and logged, and the report compares the arms the server assigned."""

from __future__ import annotations

from pathlib import Path

from pipelines.simulate.report import markdown
from pipelines.simulate.stage import run as simulate
from pipelines.simulate.users import SimConfig
from tests.conftest import tiny_config
from tests.serving.conftest import SECRET, Feed, jsonl_rows


def test_simulated_users_read_engage_and_are_reported_per_arm(feed: Feed) -> None:
    cfg = SimConfig(users=16, max_sessions=2, page=10, concurrency=2, bootstrap=200, seed=3)
    rep = simulate(feed.base, feed.data_dir, tiny_config(), SECRET, cfg)
    arms = rep["arms"]
    assert set(arms) <= {"champion", "challenger"}
    assert sum(a["users"] for a in arms.values()) == 16
    for a in arms.values():
        assert a["rejected_events"] == 0  # every simulated event is a valid one
        assert 1 <= a["sessions"] <= 2
        assert a["viewed"] > 0
        assert 0 <= a["ctr"] <= 1
        assert a["latency_p50_ms"] > 0
        assert a["versions"]  # served by a registered model
    for diffs in rep["vs_control"].values():
        for d in diffs.values():
            lo, hi = d["ci95"]
            assert lo <= hi
    # What they did reached the raw logs, like any client's events.
    logged = jsonl_rows(Path(feed.data_dir) / "raw" / "engagements")
    views = [r for r in logged if r["type"] == "view"]
    assert sum(a["viewed"] for a in arms.values()) <= len(views)
    assert "CTR" in markdown(rep)
    # Split by the retrieval experiment instead: this feed has no holdout, so one arm, and the users of
    # the first run are not sampled again.
    by_retrieval = cfg.model_copy(update={"users": 4, "max_sessions": 1, "split": "retrieval"})
    again = simulate(feed.base, feed.data_dir, tiny_config(), SECRET, by_retrieval, set(rep["user_ids"]))
    assert set(again["arms"]) == {"suggestions"}
    assert not set(again["user_ids"]) & set(rep["user_ids"])
