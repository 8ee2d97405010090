"""Point-in-time index: window counts, sums and "last before" agree with brute force; the post counters'
all-time window and rates."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.common import schema
from pipelines.features import pit
from pipelines.features.pit import Codes, EventIndex

SPAN = 10_000

events = st.lists(st.tuples(st.integers(0, 4), st.integers(1, 999)), max_size=60)
queries = st.lists(st.tuples(st.integers(-1, 5), st.integers(0, 1000)), min_size=1, max_size=20)


@settings(max_examples=60, deadline=None)
@given(events, queries, st.one_of(st.none(), st.integers(1, 500)))
def test_count_total_last_match_brute_force(
    evs: list[tuple[int, int]], qs: list[tuple[int, int]], window: int | None
) -> None:
    keys = np.array([k for k, _ in evs], dtype=np.int64)
    ts = np.array([t for _, t in evs], dtype=np.int64)
    vals = np.arange(len(evs), dtype=np.float64) + 1
    idx = EventIndex(keys, ts, SPAN, values=vals)
    qk = np.array([k for k, _ in qs], dtype=np.int64)
    qt = np.array([t for _, t in qs], dtype=np.int64)
    counts, totals, lasts = idx.count(qk, qt, window), idx.total(qk, qt, window), idx.last(qk, qt)
    for i, (k, t) in enumerate(qs):
        lo = -np.inf if window is None else t - window
        hit = [j for j, (ek, et) in enumerate(evs) if k >= 0 and ek == k and lo <= et < t]
        assert counts[i] == len(hit)
        assert np.isclose(totals[i], sum(vals[j] for j in hit))
        before = [et for ek, et in evs if k >= 0 and ek == k and et < t]
        assert lasts[i] == (max(before) if before else -1)


def test_same_second_is_never_counted() -> None:
    idx = EventIndex(np.array([1]), np.array([100]), SPAN)
    assert idx.count(np.array([1]), np.array([100]))[0] == 0
    assert idx.count(np.array([1]), np.array([101]))[0] == 1


def test_codes_map_unknown_to_minus_one() -> None:
    codes = Codes(np.array([30, 10, 20, 10]))
    assert len(codes) == 3
    assert codes(np.array([10, 20, 30, 40, 5])).tolist() == [0, 1, 2, -1, -1]
    assert Codes(np.array([], dtype=np.int64))(np.array([1])).tolist() == [-1]


def _table(name: str, rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema.TABLES[name].schema)


def test_all_time_counters_and_rates_outlive_the_windows() -> None:
    """An item that recurs for months (a film in a ratings log) keeps its popularity after the 7-day window:
    all-time counters and smoothed rates count every earlier event, and nothing at or after ``t``."""
    day = 86_400_000
    t0 = 1_600_000_000_000
    users = _table("users", [{"user_id": u, "joined_at": t0} for u in (1, 2, 3)])
    posts = _table(
        "posts",
        [{"post_id": 10, "author_id": 3, "created_at": t0, "modality": "text", "visibility": "public"}],
    )
    served = [t0 + k * day for k in (1, 2, 30)]  # two impressions a month before, one at query time
    imps = pa.table(
        {
            "viewer_id": pa.array([1, 2, 1], pa.int64()),
            "post_id": pa.array([10, 10, 10], pa.int64()),
            "served_at": pa.array(served, pa.int64()).cast(schema.TS),
        }
    )
    actions = pa.table(
        {
            "viewer_id": pa.array([1, 2], pa.int64()),
            "post_id": pa.array([10, 10], pa.int64()),
            "type": pa.array(["like", "like"]),
            "at": pa.array([served[0] + 1000, served[2]], pa.int64()).cast(schema.TS),
        }
    )
    h = pit.build_history(users, _table("friendships", []), posts, imps, actions, {}, {})
    t = h.seconds(np.array([served[2]]))
    f = pit.post_features(h, h.posts(np.array([10])), t, {"7d": 7 * 86_400})
    assert f["p_impressions_7d"][0] == 0
    assert f["p_like_7d"][0] == 0
    assert np.expm1(f["p_impressions_all"][0]) == pytest.approx(2)
    assert np.expm1(f["p_like_all"][0]) == pytest.approx(1)  # the like at query time is not counted
    assert f["p_like_rate"][0] == pytest.approx(pit.rate(np.array([1.0]), np.array([2.0]))[0])
    assert f["p_click_rate"][0] == pytest.approx(pit.rate(np.array([0.0]), np.array([2.0]))[0])
    assert pit.counter_windows({"7d": 1}) == ("7d", pit.ALL_TIME)
