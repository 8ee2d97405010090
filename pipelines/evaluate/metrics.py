"""Metrics: per task (ROC-AUC, PR-AUC, log loss, calibration error) and per request (NDCG@k, MRR)."""

from __future__ import annotations

import numpy as np


# --------------------------------------------------------------------------------------------- metrics
def task_metrics(
    y: np.ndarray, score: np.ndarray, probabilistic: bool, bins: int, prob: np.ndarray | None = None
) -> dict[str, float]:
    """ROC-AUC and PR-AUC of ``score``; log loss, RCE and ECE of ``prob`` (default ``score``) when the scorer
    gives probabilities. RCE is the relative cross-entropy against predicting the split's base rate for
    every row, in percent (the normalized-entropy metric DLRM and X's ranker report, as ``100 (1 - NE)``):
    0 learns nothing, negative is worse than the base rate.

    >>> y = np.array([0, 0, 0, 1])
    >>> round(task_metrics(y, np.array([0.1, 0.2, 0.1, 0.7]), True, 2)["rce"], 1)
    64.9
    >>> round(task_metrics(y, np.full(4, 0.25), True, 2)["rce"], 1)
    0.0
    """
    import torch
    from sklearn.metrics import average_precision_score, log_loss, roc_auc_score
    from torchmetrics.functional.classification import binary_calibration_error

    if y.min() == y.max():
        return {"auc": float("nan"), "pr_auc": float("nan"), "positives": int(y.sum())}
    out = {
        "auc": float(roc_auc_score(y, score)),
        "pr_auc": float(average_precision_score(y, score)),
        "positives": int(y.sum()),
    }
    if probabilistic:
        p = np.clip(score if prob is None else prob, 1e-7, 1 - 1e-7)
        out["log_loss"] = float(log_loss(y, p, labels=[0, 1]))
        base = np.full(len(y), np.clip(y.mean(), 1e-7, 1 - 1e-7))
        out["rce"] = 100.0 * (1.0 - out["log_loss"] / float(log_loss(y, base, labels=[0, 1])))
        out["ece"] = float(binary_calibration_error(torch.from_numpy(p), torch.from_numpy(y), n_bins=bins))
    return out


def ranking_metrics(request_ids: np.ndarray, score: np.ndarray, gain: np.ndarray, k: int) -> dict[str, float]:
    """NDCG@k and MRR over requests with at least one engaged item (torchmetrics retrieval metrics)."""
    import torch
    from torchmetrics.retrieval import RetrievalMRR, RetrievalNormalizedDCG

    idx = torch.from_numpy(np.unique(request_ids, return_inverse=True)[1].astype(np.int64))
    s = torch.from_numpy(np.asarray(score, np.float64))
    g = torch.from_numpy(np.asarray(gain, np.int64))
    ndcg = RetrievalNormalizedDCG(top_k=k, empty_target_action="skip")(s, g, indexes=idx)
    mrr = RetrievalMRR(empty_target_action="skip")(s, g > 0, indexes=idx)
    return {f"ndcg@{k}": float(ndcg), "mrr": float(mrr)}
