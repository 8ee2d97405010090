"""Offline metrics and the promotion gate on hand-made inputs, where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from models.tasks import DEFAULT_VALUE_WEIGHTS, value_score
from pipelines.common.config import RegistryConfig
from pipelines.evaluate.metrics import ranking_metrics, task_metrics
from pipelines.promote.gate import gate


def test_ranking_metrics_per_request() -> None:
    # Request a: the engaged item is ranked 2nd of 3; request b: the best item first; c: no engagement.
    req = np.array(["a", "a", "a", "b", "b", "c", "c"])
    score = np.array([0.9, 0.5, 0.1, 0.8, 0.2, 0.5, 0.4])
    gain = np.array([0, 1, 0, 3, 1, 0, 0])
    m = ranking_metrics(req, score, gain, k=10)
    assert m["mrr"] == pytest.approx((1 / 2 + 1) / 2)  # request c carries no signal and is skipped
    assert m["ndcg@10"] == pytest.approx((1 / np.log2(3) + 1.0) / 2)


def test_task_metrics_perfect_and_inverted() -> None:
    y = np.array([0, 0, 1, 1])
    good = task_metrics(y, np.array([0.1, 0.2, 0.8, 0.9]), probabilistic=True, bins=5)
    bad = task_metrics(y, np.array([0.9, 0.8, 0.2, 0.1]), probabilistic=False, bins=5)
    assert good["auc"] == 1.0
    assert good["pr_auc"] == 1.0
    assert good["log_loss"] < 0.25
    assert "ece" in good
    assert bad["auc"] == 0.0
    assert "log_loss" not in bad
    assert np.isnan(task_metrics(np.zeros(4, np.int64), np.ones(4), True, 5)["auc"])


def test_value_model_demotes_hides() -> None:
    liked = {
        "click": 0.3,
        "like": 0.2,
        "comment": 0.0,
        "share": 0.0,
        "hide": 0.0,
        "skip": 0.2,
        "dwell": 8000.0,
    }
    hidden = {**liked, "hide": 0.3}
    assert value_score(hidden, DEFAULT_VALUE_WEIGHTS) < value_score(liked, DEFAULT_VALUE_WEIGHTS)


def test_gate_needs_a_real_gain_and_respects_the_guardrail() -> None:
    def m(ndcg: float, auc: float, hide: float = float("nan")) -> dict[str, object]:
        return {"ndcg@10": ndcg, "tasks": {"click": {"auc": auc}, "hide": {"auc": hide}}}

    cfg = RegistryConfig(min_gain=0.01)
    assert gate(m(0.505, 0.7), m(0.5, 0.7), cfg, 10)[0] is False  # +0.005 is below min_gain
    assert gate(m(0.52, 0.7), m(0.5, 0.7), cfg, 10)[0] is True
    assert gate(m(0.52, 0.7, 0.5), m(0.5, 0.7), cfg, 10)[0] is True  # NaN AUC on one side is skipped
    ok, why = gate(m(0.9, 0.68), m(0.5, 0.7), RegistryConfig(max_auc_drop=0.01), 10)
    assert not ok
    assert why.startswith("AUC guardrail: click")


def test_rce_is_relative_to_the_base_rate() -> None:
    y = np.array([0] * 90 + [1] * 10)
    base = task_metrics(y, np.full(100, 0.1), probabilistic=True, bins=5)
    assert base["rce"] == pytest.approx(0.0, abs=1e-9)
    sharp = task_metrics(y, np.where(y == 1, 0.6, 0.05), probabilistic=True, bins=5)
    assert sharp["rce"] > 30
    wrong = task_metrics(y, np.where(y == 1, 0.05, 0.6), probabilistic=True, bins=5)
    assert wrong["rce"] < 0  # worse than predicting the base rate
    assert "rce" not in task_metrics(y, np.arange(100.0), probabilistic=False, bins=5)
