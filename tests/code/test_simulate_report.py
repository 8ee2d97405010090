"""The online report's arithmetic: ratio metrics per arm and bootstrap intervals that separate a clearly
better arm and straddle zero between identical ones."""

from __future__ import annotations

import numpy as np

from pipelines.simulate.report import report
from pipelines.simulate.users import SimConfig, UserLog


def users(arm: str, n: int, ctr: float, seed: int) -> list[UserLog]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        u = UserLog(user_id=i, arm=arm, sessions=2, viewed=20, dwell_ms=40_000.0, latencies_ms=[10.0, 12.0])
        u.actions["click"] = int(rng.binomial(20, ctr))
        out.append(u)
    return out


def test_a_better_arm_gets_an_interval_above_zero_and_equal_arms_straddle_it() -> None:
    cfg = SimConfig(bootstrap=400, seed=1)
    rep = report(users("champion", 300, 0.10, 1) + users("challenger", 300, 0.20, 2), cfg)
    assert rep["control"] == "champion"
    assert abs(rep["arms"]["champion"]["ctr"] - 0.10) < 0.02
    assert rep["arms"]["champion"]["dwell_s_per_session"] == 20.0
    assert rep["arms"]["champion"]["sessions"] == 2.0
    lo, hi = rep["vs_control"]["challenger"]["ctr"]["ci95"]
    assert 0 < lo < 0.10 < hi < 0.2
    same = report(users("champion", 300, 0.10, 3) + users("chronological", 300, 0.10, 4), cfg)
    lo, hi = same["vs_control"]["chronological"]["ctr"]["ci95"]
    assert lo < 0 < hi


def test_the_retrieval_experiment_is_compared_with_its_holdout() -> None:
    cfg = SimConfig(bootstrap=200, seed=2)
    rep = report(users("suggestions", 200, 0.2, 1) + users("friends_only", 200, 0.1, 2), cfg)
    assert rep["control"] == "friends_only"
    assert set(rep["vs_control"]) == {"suggestions"}
    assert rep["vs_control"]["suggestions"]["ctr"]["ci95"][0] > 0


def test_the_online_gate_needs_higher_ctr_and_dwell_and_no_significant_harm() -> None:
    from pipelines.promote.gate import online_gate

    cfg = SimConfig(bootstrap=300, seed=5)
    better = report(users("champion", 300, 0.10, 1) + users("challenger", 300, 0.20, 2), cfg)
    for u in better["arms"].values():
        u["versions"] = ["9"]
    # Same dwell in both arms: not a win on dwell per session.
    ok, why = online_gate(better, "9")
    assert not ok
    assert "dwell_s_per_session not higher" in why
    better["vs_control"]["challenger"]["dwell_s_per_session"] = {"diff": 3.0, "ci95": [1.0, 5.0]}
    assert online_gate(better, "9")[0]
    assert not online_gate(better, "10")[0]  # a report about another version decides nothing
    better["vs_control"]["challenger"]["hide_rate"] = {"diff": 0.02, "ci95": [0.01, 0.03]}
    ok, why = online_gate(better, "9")
    assert not ok
    assert "hide rate significantly higher" in why
