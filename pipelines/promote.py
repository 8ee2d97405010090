"""Promotion: ``python -m pipelines.promote --data-dir D [--version N] [--force] [--reason TEXT]``.

Moves alias ``champion`` of ``feed-ranker`` to a version (default: the one aliased ``challenger``) only if
it beats the current champion on the same evaluation set: both versions are scored now, on this data
directory's test split, and the candidate must improve ``registry.gate_metric`` by more than
``registry.min_gain`` without any task's AUC falling more than ``registry.max_auc_drop`` (configs/train.yaml).
With no champion yet, the candidate becomes the first. ``--force`` promotes regardless and says so.

``--online-report R.json`` (from ``pipelines.simulate --out``, with the candidate served as ``challenger``)
adds the online half: the candidate must also win online (:func:`online_gate`). ``make retrain`` uses it.

Every decision, promoted or not, is recorded on the candidate version as tags (``promotion.decision``,
``promotion.reason``, ``promotion.at``, ``promotion.eval_set``, ``promotion.previous_champion``) and
printed. Serving follows the alias, so moving it by hand in the MLflow UI is just as valid.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from models.tasks import BINARY_TASKS
from pipelines.cli import DataError, exit_on_error
from pipelines.config import RegistryConfig, TrainConfig, load_config

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


def promote(
    data_dir: Path,
    cfg: TrainConfig,
    version: str | None = None,
    force: bool = False,
    note: str | None = None,
    online: dict[str, Any] | None = None,
) -> Decision:
    """Decide, move the alias when warranted, and tag the candidate version with the decision."""
    from mlflow import MlflowClient

    from pipelines import tracking
    from pipelines.evaluate import evaluate

    tracking.configure(data_dir)
    client = MlflowClient()
    name = cfg.registry.model_name
    if version is None:
        challenger = tracking.version_of(name, tracking.CHALLENGER)
        if challenger is None:
            raise DataError(
                f"{name}: no version has alias {tracking.CHALLENGER!r} (train one, or pass --version)"
            )
        version = str(challenger.version)
    champion = tracking.version_of(name, tracking.CHAMPION)
    previous = str(champion.version) if champion is not None else None
    if previous == version:
        return Decision(False, version, previous, f"version {version} is already {tracking.CHAMPION}")
    eval_set = None
    if champion is None:
        ok, why = True, "first champion"
    else:
        scorers = {
            "candidate": tracking.load_ranker_version(f"models:/{name}/{version}"),
            "champion": tracking.load_ranker_version(f"models:/{name}/{previous}"),
        }
        ev = evaluate(data_dir, scorers, cfg.evaluate, baselines=False)
        eval_set = ev.eval_set
        ok, why = gate(ev.models["candidate"], ev.models["champion"], cfg.registry, cfg.evaluate.ndcg_k)
        why = f"vs version {previous} on test split {eval_set}: {why}"
    if online is not None:  # both halves must pass
        ok_online, why_online = online_gate(online, version)
        ok, why = ok and ok_online, f"{why}; {why_online}"
    if force and not ok:
        ok, why = True, f"forced ({note or 'no reason given'}); the gate said: {why}"
    elif note:
        why = f"{why}; note: {note}"
    if ok:
        client.set_registered_model_alias(name, tracking.CHAMPION, version)
    tags = {
        "promotion.decision": "promoted" if ok else "rejected",
        "promotion.reason": why[:5000],
        "promotion.at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "promotion.eval_set": eval_set or "",
        "promotion.previous_champion": previous or "",
    }
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    return Decision(ok, version, previous, why, eval_set)


app = typer.Typer(add_completion=False, help=__doc__.split("\n")[0])


@app.command()
def main(
    data_dir: Annotated[Path, typer.Option(help="Data directory (its test split is the evaluation set).")],
    config: Annotated[Path | None, typer.Option(help="YAML config (configs/train.yaml).")] = Path(
        "configs/train.yaml"
    ),
    version: Annotated[str | None, typer.Option(help="Version to promote (default: the challenger).")] = None,
    force: Annotated[
        bool, typer.Option(help="Promote even if the gate says no (recorded as forced).")
    ] = False,
    reason: Annotated[str | None, typer.Option(help="A note recorded with the decision.")] = None,
    online_report: Annotated[
        Path | None, typer.Option(help="pipelines.simulate report.json: the candidate must also win online.")
    ] = None,
) -> None:
    """Move alias champion to a version that beats the current champion."""
    from pipelines.runtime import setup_logging

    setup_logging()
    with exit_on_error():
        cfg = load_config(config, TrainConfig)
        import json

        online = json.loads(online_report.read_text()) if online_report is not None else None
        d = promote(data_dir, cfg, version, force, reason, online)
        verb = "promoted to champion" if d.promoted else "not promoted"
        typer.echo(f"{cfg.registry.model_name} version {d.candidate} {verb}: {d.reason}")


if __name__ == "__main__":
    app()
