"""Offline evaluation: the test split scored by every scorer side by side (:func:`evaluate`), per-task
and per-request metrics collected in one :class:`Evaluation`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.tasks import BINARY_TASKS, value_score
from pipelines.common.cli import DataError
from pipelines.common.config import EvaluateConfig
from pipelines.evaluate.metrics import ranking_metrics, task_metrics
from pipelines.evaluate.report import write_report
from pipelines.evaluate.scorers import fit_peers, oracle, popularity, reverse_chron, score_ranker
from pipelines.features.manifest import eval_set_id, load_manifest, read_columns

log = logging.getLogger(__name__)

RANKER = "ranker"


SCORERS = (RANKER, "lightgbm", "logistic", "popularity", "reverse_chron", "oracle")


@dataclass
class Evaluation:
    """Metrics of every scorer on one split; ``models[name]`` has ``tasks``, ranking and dwell entries."""

    eval_set: str
    rows: int
    requests: int
    ndcg_k: int
    models: dict[str, dict[str, Any]]
    dwell_logged: bool = True  # False: the logs carry no dwell; skip and dwell are not evaluated

    def to_json(self) -> dict[str, Any]:
        return {
            "eval_set": self.eval_set,
            "rows": self.rows,
            "requests": self.requests,
            "ndcg_k": self.ndcg_k,
            "models": self.models,
        }

    def flat(self, name: str = RANKER) -> dict[str, float]:
        """One scorer's metrics as flat ``test/...`` keys, MLflow-safe (``test/ndcg_at_10``)."""
        m = self.models[name]
        out = {
            f"test/{t}/{k}": float(v) for t, d in m["tasks"].items() for k, v in d.items() if k != "positives"
        }
        out.update({f"test/{k}": float(v) for k, v in m.items() if k != "tasks"})
        return {k.replace("@", "_at_"): v for k, v in out.items() if np.isfinite(v)}

    def table(self) -> str:
        """The quality table (Markdown): AUC per task, dwell MAE, NDCG@k and MRR per scorer; then RCE per task
        (relative cross-entropy against the base rate, %) for the scorers that give probabilities."""
        names = [n for n in SCORERS if n in self.models] + [n for n in self.models if n not in SCORERS]
        head = ["scorer", *[f"{t} AUC" for t in BINARY_TASKS], "dwell MAE s", f"NDCG@{self.ndcg_k}", "MRR"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for n in names:
            m = self.models[n]
            aucs = [_fmt(m["tasks"][t]["auc"], ".3f") for t in BINARY_TASKS]
            mae = f"{m['dwell_mae_s']:.2f}" if "dwell_mae_s" in m else "–"
            row = [n, *aucs, mae, f"{m[f'ndcg@{self.ndcg_k}']:.3f}", f"{m['mrr']:.3f}"]
            lines.append("| " + " | ".join(row) + " |")
        calibrated = [n for n in names if "rce" in self.models[n]["tasks"][BINARY_TASKS[0]]]
        if calibrated:
            lines += ["", "| scorer | " + " | ".join(f"{t} RCE %" for t in BINARY_TASKS) + " |"]
            lines.append("|" + "---|" * (len(BINARY_TASKS) + 1))
            for n in calibrated:
                rce = [_fmt(self.models[n]["tasks"][t].get("rce"), ".2f") for t in BINARY_TASKS]
                lines.append("| " + " | ".join([n, *rce]) + " |")
        skipped = [
            t
            for t in BINARY_TASKS
            if self.models[names[0]]["tasks"][t].get("positives", 1) == 0
            and (t != "skip" or self.dwell_logged)
        ]
        if skipped:
            lines += ["", f"No positive label in this split for: {', '.join(skipped)} (not evaluated)."]
        if not self.dwell_logged:
            lines += [
                "",
                "No dwell in these logs (no view events): skip and dwell are neither learned nor evaluated.",
            ]
        return "\n".join(lines)


def _fmt(v: float | None, spec: str) -> str:
    return "–" if v is None or not np.isfinite(v) else format(v, spec)


def evaluate(
    data_dir: Path,
    scorers: dict[str, Any],
    cfg: EvaluateConfig,
    out_dir: Path | None = None,
    baselines: bool = True,
    split: str = "test",
    peers: dict[str, Any] | None = None,
) -> Evaluation:
    """Evaluate ``scorers`` (name → ServableRanker) and, with ``baselines``, the reference scorers; the
    peers are fitted here unless ``peers`` brings them fitted
    (:func:`pipelines.evaluate.scorers.fit_peers`)."""
    manifest = load_manifest(data_dir)
    cols = read_columns(data_dir, split)
    n = len(cols["impression_id"])
    if n == 0:
        raise DataError(f"{data_dir / 'features' / split}: no rows to evaluate")
    preds: dict[str, dict[str, np.ndarray]] = {}
    probabilistic: dict[str, bool] = {}
    logged: dict[str, dict[str, np.ndarray]] = {}  # rankers at the logged position: calibration, dwell MAE
    for name, ranker in scorers.items():
        preds[name], probabilistic[name] = score_ranker(ranker, cols), True
        logged[name] = score_ranker(ranker, cols, at_logged_position=True)
    if baselines:
        for name, peer in (peers if peers is not None else fit_peers(data_dir, cfg)).items():
            preds[name], probabilistic[name] = peer.predict(cols), True
        pop = popularity(cols, manifest["config"]["windows"])
        preds["popularity"] = {t: pop for t in BINARY_TASKS}
        chron = reverse_chron(cols)
        preds["reverse_chron"] = {t: chron for t in BINARY_TASKS}
        probabilistic["popularity"] = probabilistic["reverse_chron"] = False
        truth = oracle(data_dir, cols["impression_id"])
        if truth is not None:
            preds["oracle"], probabilistic["oracle"] = truth, True
    dwell_logged = bool(manifest.get("dwell_logged", True))
    if not dwell_logged:  # dwell_ms 0 and skip 1 everywhere are not observations
        preds = {k: {t: v for t, v in p.items() if t != "dwell"} for k, p in preds.items()}
        logged = {k: {t: v for t, v in p.items() if t != "dwell"} for k, p in logged.items()}
    weights = cfg.value_weights  # the value model; without dwell in the logs, without skip and dwell
    if not dwell_logged:
        weights = {t: w for t, w in weights.items() if t not in ("skip", "dwell")}
    gain = sum(w * cols[t].astype(np.int64) for t, w in cfg.relevance.items())
    gain = np.asarray(gain, np.int64) if not np.isscalar(gain) else np.zeros(n, np.int64)
    models: dict[str, dict[str, Any]] = {}
    for name, pred in preds.items():
        calib = logged.get(name, pred)
        m: dict[str, Any] = {
            "tasks": {
                t: task_metrics(
                    cols[t].astype(np.int64), pred[t], probabilistic[name], cfg.calibration_bins, calib[t]
                )
                for t in BINARY_TASKS
                if t != "skip" or dwell_logged
            }
        }
        if not dwell_logged:
            m["tasks"]["skip"] = {"auc": float("nan"), "pr_auc": float("nan"), "positives": 0}
        if "dwell" in calib:
            m["dwell_mae_s"] = float(np.mean(np.abs(calib["dwell"] - cols["dwell_ms"]))) / 1000.0
        order = value_score(pred, weights) if all(t in pred for t in weights) else pred["click"]
        m.update(ranking_metrics(cols["request_id"], order, gain, cfg.ndcg_k))
        m["mean_auc"] = float(np.nanmean([m["tasks"][t]["auc"] for t in BINARY_TASKS]))
        models[name] = m
    result = Evaluation(
        eval_set=eval_set_id(data_dir, split),
        rows=n,
        requests=len(np.unique(cols["request_id"])),
        ndcg_k=cfg.ndcg_k,
        models={k: models[k] for k in [*scorers, *(s for s in SCORERS if s in models and s not in scorers)]},
        dwell_logged=dwell_logged,
    )
    if out_dir is not None:
        write_report(result, cols, preds, {**preds, **logged}, probabilistic, cfg, out_dir)
    return result
