"""The evaluate stage: a registered (or checkpointed) ranker and the baselines on the test split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.common.cli import DataError
from pipelines.common.config import EvaluateConfig
from pipelines.evaluate.evaluation import RANKER, Evaluation, evaluate


def load_ranker(
    model_uri: str | None, checkpoint: Path | None, data_dir: Path, model_name: str = "feed-ranker"
) -> tuple[str, Any]:
    """A ServableRanker from an MLflow model URI, a training checkpoint folder, or (neither given) the
    registered ``model_name`` at ``@champion``, else at ``@challenger``."""
    if checkpoint is not None:
        from pipelines.common.tracking import load_trained

        return str(checkpoint), load_trained(checkpoint)
    from pipelines.common.tracking import CHALLENGER, CHAMPION, configure, load_ranker_version, version_of

    store = configure(data_dir)
    uri = model_uri
    if uri is None:  # the champion, else the challenger training registered
        alias = next((a for a in (CHAMPION, CHALLENGER) if version_of(model_name, a) is not None), None)
        if alias is None:
            raise DataError(
                f"{store}: no {model_name}@{CHAMPION} or @{CHALLENGER} to evaluate "
                "(run pipelines.train first, or pass --model-uri / --checkpoint)"
            )
        uri = f"models:/{model_name}@{alias}"
    return uri, load_ranker_version(uri)


def run(
    cfg: EvaluateConfig,
    data_dir: Path,
    model_uri: str | None = None,
    checkpoint: Path | None = None,
    out: Path | None = None,
    model_name: str = "feed-ranker",
) -> tuple[str, Evaluation]:
    """Score the test split with the ranker (``model_uri`` or ``checkpoint``) and every baseline; write
    the report to ``out`` (default ``D/evaluation/latest``). Returns the ranker's name and the result."""
    name, ranker = load_ranker(model_uri, checkpoint, data_dir, model_name)
    return name, evaluate(data_dir, {RANKER: ranker}, cfg, out or data_dir / "evaluation" / "latest")
