"""The promotion gates: a challenger must beat the champion on the same test split (offline) and, when
given a simulation report, online."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.tasks import BINARY_TASKS
from pipelines.common.config import RegistryConfig, RetrieverRegistryConfig

log = logging.getLogger(__name__)


@dataclass
class Decision:
    promoted: bool
    candidate: str
    champion: str | None  # the champion before this decision
    reason: str
    eval_set: str | None = None


def gate_key(cfg: RegistryConfig, ndcg_k: int) -> str:
    return {"ndcg": f"ndcg@{ndcg_k}", "mrr": "mrr", "mean_auc": "mean_auc"}[cfg.gate_metric]


def gate(
    candidate: dict[str, Any], champion: dict[str, Any], cfg: RegistryConfig, ndcg_k: int
) -> tuple[bool, str]:
    """Compare two scorers' metrics (``Evaluation.models`` entries) from the same evaluation set.

    >>> m = lambda ndcg, auc: {"ndcg@10": ndcg, "tasks": {"click": {"auc": auc}}}
    >>> gate(m(0.50, 0.70), m(0.45, 0.71), RegistryConfig(), 10)
    (True, 'ndcg@10 0.5000 > 0.4500 (+0.0500); no task AUC fell more than 0.01')
    >>> gate(m(0.50, 0.60), m(0.45, 0.71), RegistryConfig(), 10)[1]
    'AUC guardrail: click 0.6000 < champion 0.7100 - 0.01'
    """
    key = gate_key(cfg, ndcg_k)
    for task in BINARY_TASKS:
        c, p = candidate["tasks"].get(task, {}).get("auc"), champion["tasks"].get(task, {}).get("auc")
        if c is None or p is None or not (np.isfinite(c) and np.isfinite(p)):
            continue
        if c < p - cfg.max_auc_drop:
            return False, f"AUC guardrail: {task} {c:.4f} < champion {p:.4f} - {cfg.max_auc_drop:g}"
    gain = candidate[key] - champion[key]
    if gain > cfg.min_gain:
        return True, (
            f"{key} {candidate[key]:.4f} > {champion[key]:.4f} ({gain:+.4f}); "
            f"no task AUC fell more than {cfg.max_auc_drop:g}"
        )
    return (
        False,
        f"{key} {candidate[key]:.4f} does not beat champion {champion[key]:.4f} by > {cfg.min_gain:g}",
    )


def online_gate(report: dict[str, Any], version: str, arm: str = "challenger") -> tuple[bool, str]:
    """The online half of promotion, from a :mod:`pipelines.simulate` report where ``version`` served ``arm``.

    Wins when CTR and dwell per session are both higher than the control's (point estimates), neither is
    significantly lower (95% interval wholly below zero), and the hide rate is not significantly higher.

    >>> d = lambda diff, lo, hi: {"diff": diff, "ci95": [lo, hi]}
    >>> rep = {"control": "champion", "arms": {"challenger": {"versions": ["7"]}},
    ...        "vs_control": {"challenger": {"ctr": d(0.01, -0.01, 0.03),
    ...                       "dwell_s_per_session": d(2.0, -1.0, 5.0), "hide_rate": d(0.0, -0.01, 0.01)}}}
    >>> online_gate(rep, "7")[0], online_gate(rep, "8")[1]
    (True, 'the online report is about version(s) 7 of challenger, not 8')
    """
    served = report.get("arms", {}).get(arm, {}).get("versions", [])
    if served != [version]:
        return (
            False,
            f"the online report is about version(s) {', '.join(served) or 'none'} of {arm}, not {version}",
        )
    diffs = report["vs_control"][arm]
    summary = "; ".join(
        f"{m} {diffs[m]['diff']:+.4g} [{diffs[m]['ci95'][0]:+.4g}, {diffs[m]['ci95'][1]:+.4g}]"
        for m in ("ctr", "dwell_s_per_session", "hide_rate")
    )
    for m in ("ctr", "dwell_s_per_session"):
        if diffs[m]["diff"] <= 0:
            return False, f"online: {m} not higher than {report['control']} ({summary})"
        if diffs[m]["ci95"][1] < 0:
            return False, f"online: {m} significantly lower ({summary})"
    if diffs["hide_rate"]["ci95"][0] > 0:
        return False, f"online: hide rate significantly higher ({summary})"
    return True, f"online: wins vs {report['control']} ({summary})"


def recall_gate(
    candidate: dict[int, float], champion: dict[int, float], cfg: RetrieverRegistryConfig
) -> tuple[bool, str]:
    """The retriever's gate: recall at ``cfg.gate_k`` on the same test split (``{K: recall}`` each).

    >>> recall_gate({200: 0.41}, {200: 0.38}, RetrieverRegistryConfig())
    (True, 'recall@200 0.4100 > 0.3800 (+0.0300)')
    """
    k = cfg.gate_k
    gain = candidate[k] - champion[k]
    if gain > cfg.min_gain:
        return True, f"recall@{k} {candidate[k]:.4f} > {champion[k]:.4f} ({gain:+.4f})"
    return (
        False,
        f"recall@{k} {candidate[k]:.4f} does not beat champion {champion[k]:.4f} by > {cfg.min_gain:g}",
    )
