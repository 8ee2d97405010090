"""The open-loop load generator's arithmetic: capacity is an unbroken run of passing steps from the
lowest rate, and the feed's Server-Timing header is read into stage durations."""

from __future__ import annotations

import numpy as np

from bench.loadgen import capacity, poisson_arrivals, schedule_arrivals, server_timing


def step(qps: float, p99: float, ok: int = 100, sent: int = 100, fallbacks: int = 0) -> dict:
    return {"offered_qps": qps, "p99": p99, "ok": ok, "sent": sent, "fallbacks": fallbacks}


def test_capacity_is_the_top_of_the_unbroken_run_of_passing_steps() -> None:
    steps = [step(10, 40), step(20, 48), step(30, 70), step(40, 45)]  # 40 passes again: noise
    assert capacity(steps, 50) == 20
    assert capacity(steps, 100) == 40
    assert capacity([step(10, 60), step(20, 40)], 50) is None  # the lowest failed: no capacity
    assert capacity([step(10, 40, ok=99)], 50) is None  # an error is a failed step
    assert capacity([step(10, 40, fallbacks=1)], 50) is None  # so is a fallback feed


def test_capacity_may_tolerate_a_share_of_failed_requests() -> None:
    steps = [step(10, 40), step(20, 45, ok=99, sent=100), step(30, 48, ok=97, sent=100)]
    assert capacity(steps, 50) == 10  # one shed request fails the strict rule
    assert capacity(steps, 50, max_failed=0.01) == 20  # at most 1% shed, failed or fallen back
    assert capacity([step(10, 40, ok=99, fallbacks=1)], 50, max_failed=0.01) is None  # 2 of 100


def test_server_timing_is_read_into_stage_durations() -> None:
    header = "retrieval;dur=3.10, ranking;dur=7.25, rerank;dur=0.90, total;dur=11.4, bad;dur=x"
    assert server_timing(header) == {"retrieval": 3.1, "ranking": 7.25, "rerank": 0.9, "total": 11.4}
    assert server_timing("") == {}


def test_arrivals_are_a_poisson_process_over_the_whole_step() -> None:
    rng = np.random.default_rng(0)
    counts = [len(poisson_arrivals(40.0, 30.0, rng)) for _ in range(20)]
    assert abs(np.mean(counts) - 1200) < 3 * np.sqrt(1200 / 20)  # mean rate x seconds
    one = poisson_arrivals(40.0, 30.0, rng)
    assert one.min() >= 0
    assert one.max() < 30.0
    assert one.max() > 29.0  # the schedule reaches the end of the step
    assert np.all(np.diff(one) > 0)
    halves = np.histogram(one, bins=2, range=(0, 30))[0]
    assert abs(halves[0] - halves[1]) < 5 * np.sqrt(len(one))  # not squeezed into a part of the step


def test_a_schedule_steps_the_rate_within_one_run() -> None:
    rng = np.random.default_rng(1)
    arrivals = schedule_arrivals([(10.0, 20.0), (80.0, 20.0)], rng)
    assert np.all(np.diff(arrivals) > 0)
    low, high = np.sum(arrivals < 20.0), np.sum(arrivals >= 20.0)
    assert abs(low - 200) < 4 * np.sqrt(200)
    assert abs(high - 1600) < 4 * np.sqrt(1600)
    assert arrivals.max() < 40.0
