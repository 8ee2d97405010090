"""Offline evaluation: ``python -m pipelines.evaluate --data-dir D [--model-uri URI | --checkpoint DIR]``.

The command line of the stage; the work is :func:`pipelines.evaluate.stage.run`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.common.cli import exit_on_error
from pipelines.common.config import TrainConfig, load_config
from pipelines.evaluate.stage import run

app = typer.Typer(add_completion=False, help=__doc__.split("\n")[0])


@app.command()
def main(
    data_dir: Annotated[Path, typer.Option(help="Data directory holding features/ (and truth/).")],
    model_uri: Annotated[
        str | None,
        typer.Option(help="MLflow model URI (default: models:/feed-ranker@champion, else @challenger)."),
    ] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="A training checkpoint folder instead.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config (configs/train.yaml).")] = Path(
        "configs/train.yaml"
    ),
    out: Annotated[Path | None, typer.Option(help="Output folder (default D/evaluation/latest).")] = None,
) -> None:
    """Evaluate a ranker and the baselines on the test split; print the quality table."""
    from pipelines.common.runtime import setup_logging

    setup_logging()
    with exit_on_error():
        cfg = load_config(config, TrainConfig)
        name, result = run(cfg.evaluate, data_dir, model_uri, checkpoint, out, cfg.registry.model_name)
        typer.echo(
            f"{name} on test split {result.eval_set}: {result.rows} impressions, {result.requests} requests"
        )
        typer.echo(result.table())


if __name__ == "__main__":
    app()
