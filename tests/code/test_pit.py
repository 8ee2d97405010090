"""Point-in-time index: window counts, sums and "last before" agree with brute force."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

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
