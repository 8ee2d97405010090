"""The promote stage: move alias ``champion`` when the gate says so, and record why on the version: the
ranker (:func:`run`: NDCG and the AUC guardrail, optionally online) or the retriever (:func:`run_retriever`:
recall@K), each against its champion on the same test split."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from pipelines.common.cli import DataError
from pipelines.common.config import RetrieverConfig, TrainConfig
from pipelines.promote.gate import Decision, gate, online_gate, recall_gate


def run(
    data_dir: Path,
    cfg: TrainConfig,
    version: str | None = None,
    force: bool = False,
    note: str | None = None,
    online: dict[str, Any] | None = None,
) -> Decision:
    """Decide, move the alias when warranted, and tag the candidate version with the decision."""
    name = cfg.registry.model_name
    version, previous = _candidate(data_dir, name, version)
    if previous == version:
        return Decision(False, version, previous, f"version {version} is already champion")
    ok, why, eval_set = _offline(data_dir, cfg, version, previous)
    if online is not None:  # both halves must pass
        ok_online, why_online = online_gate(online, version)
        ok, why = ok and ok_online, f"{why}; {why_online}"
    return _decide(name, version, previous, ok, why, eval_set, force, note)


def run_retriever(
    data_dir: Path,
    cfg: RetrieverConfig,
    version: str | None = None,
    force: bool = False,
    note: str | None = None,
) -> Decision:
    """The retriever's promotion: recall@``registry.gate_k`` of the candidate against the champion, both
    measured now on the same test split (:func:`pipelines.retrieval.recall.evaluate_recall`)."""
    from pipelines.common import tracking
    from pipelines.retrieval.recall import evaluate_recall
    from pipelines.retrieval.setup import build_setup

    name = cfg.registry.model_name
    version, previous = _candidate(data_dir, name, version)
    if previous == version:
        return Decision(False, version, previous, f"version {version} is already champion")
    if previous is None:
        ok, why, eval_set = True, "first champion", None
    else:
        setup = build_setup(data_dir, cfg)
        recall = {
            v: evaluate_recall(
                data_dir, tracking.load_retriever_version(f"models:/{name}/{v}"), setup, cfg.evaluate
            )
            for v in (version, previous)
        }
        eval_set = recall[version].eval_set
        ok, why = recall_gate(
            recall[version].recall["retriever"], recall[previous].recall["retriever"], cfg.registry
        )
        why = f"vs version {previous} on test split {eval_set}: {why}"
    return _decide(name, version, previous, ok, why, eval_set, force, note)


def _decide(
    name: str,
    version: str,
    previous: str | None,
    ok: bool,
    why: str,
    eval_set: str | None,
    force: bool,
    note: str | None,
) -> Decision:
    """Apply ``force`` and ``note``, move the alias when the decision is yes, tag the version with it."""
    from mlflow import MlflowClient

    from pipelines.common import tracking

    if force and not ok:
        ok, why = True, f"forced ({note or 'no reason given'}); the gate said: {why}"
    elif note:
        why = f"{why}; note: {note}"
    client = MlflowClient()
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


def _candidate(data_dir: Path, name: str, version: str | None) -> tuple[str, str | None]:
    """The version to decide on (``version``, or the challenger's) and the champion's, if any; MLflow
    pointed at ``data_dir``'s store."""
    from pipelines.common import tracking

    tracking.configure(data_dir)
    champion = tracking.version_of(name, tracking.CHAMPION)
    return version or _challenger(name), str(champion.version) if champion is not None else None


def _challenger(name: str) -> str:
    """The version alias ``challenger`` points at."""
    from pipelines.common import tracking

    challenger = tracking.version_of(name, tracking.CHALLENGER)
    if challenger is None:
        raise DataError(
            f"{name}: no version has alias {tracking.CHALLENGER!r} (train one, or pass --version)"
        )
    return str(challenger.version)


def _offline(
    data_dir: Path, cfg: TrainConfig, version: str, previous: str | None
) -> tuple[bool, str, str | None]:
    """The offline gate: the candidate against the champion on the same test split (``ok, why, eval set``);
    the first version passes."""
    from pipelines.common import tracking
    from pipelines.evaluate.evaluation import evaluate

    if previous is None:
        return True, "first champion", None
    name = cfg.registry.model_name
    scorers = {
        "candidate": tracking.load_ranker_version(f"models:/{name}/{version}"),
        "champion": tracking.load_ranker_version(f"models:/{name}/{previous}"),
    }
    ev = evaluate(data_dir, scorers, cfg.evaluate, baselines=False)
    ok, why = gate(ev.models["candidate"], ev.models["champion"], cfg.registry, cfg.evaluate.ndcg_k)
    return ok, f"vs version {previous} on test split {ev.eval_set}: {why}", ev.eval_set
