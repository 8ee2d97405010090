"""Distributed training: ``python -m pipelines.train --config configs/train.yaml --data-dir D``.

The command line of the stage; the work is :func:`pipelines.train.stage.run`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from pipelines.common.cli import exit_on_error
from pipelines.common.config import TrainConfig, dump_config, load_config
from pipelines.features.manifest import load_manifest
from pipelines.train.stage import run

log = logging.getLogger(__name__)

app = typer.Typer(add_completion=False, help=__doc__.split("\n")[0])


@app.command()
def main(
    data_dir: Annotated[Path, typer.Option(help="Data directory holding features/.")],
    config: Annotated[Path | None, typer.Option(help="YAML config (configs/train.yaml).")] = Path(
        "configs/train.yaml"
    ),
    resume: Annotated[
        bool, typer.Option(help="Continue the experiment's last run from its checkpoint.")
    ] = False,
) -> None:
    """Train the multitask ranker with Ray Train + TorchRec."""
    from pipelines.common.runtime import ray_session, setup_logging

    setup_logging()
    with exit_on_error():
        cfg = load_config(config, TrainConfig)
        log.info("resolved config:\n%s", dump_config(cfg))
        load_manifest(data_dir)
        with ray_session():
            published = run(cfg, data_dir, resume=resume)
        ev = published.evaluation
        typer.echo(f"test split {ev.eval_set}: {ev.rows} impressions, {ev.requests} requests")
        typer.echo(ev.table())
        typer.echo(
            f"registered {published.model_name} version {published.version} (alias challenger); "
            f"MLflow run {published.run_id}; checkpoint {published.checkpoint}"
        )


if __name__ == "__main__":
    # Run through the package so that what is pickled names its `pipelines.train` module, not `__main__`.
    from pipelines.train.__main__ import app as package_app

    package_app()
