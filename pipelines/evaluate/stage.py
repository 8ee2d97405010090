"""The evaluate stage: a registered (or checkpointed) ranker and the baselines on the test split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.common.config import EvaluateConfig
from pipelines.evaluate.evaluation import RANKER, Evaluation, evaluate


def load_ranker(model_uri: str | None, checkpoint: Path | None, data_dir: Path) -> tuple[str, Any]:
    """A ServableRanker from an MLflow model URI or a training checkpoint folder."""
    if checkpoint is not None:
        from pipelines.common.tracking import load_trained

        return str(checkpoint), load_trained(checkpoint)
    from pipelines.common.tracking import configure, load_ranker_version

    configure(data_dir)
    uri = model_uri or "models:/feed-ranker@champion"
    return uri, load_ranker_version(uri)


def run(
    cfg: EvaluateConfig,
    data_dir: Path,
    model_uri: str | None = None,
    checkpoint: Path | None = None,
    out: Path | None = None,
) -> tuple[str, Evaluation]:
    """Score the test split with the ranker (``model_uri`` or ``checkpoint``) and every baseline; write
    the report to ``out`` (default ``D/evaluation/latest``). Returns the ranker's name and the result."""
    name, ranker = load_ranker(model_uri, checkpoint, data_dir)
    return name, evaluate(data_dir, {RANKER: ranker}, cfg, out or data_dir / "evaluation" / "latest")
