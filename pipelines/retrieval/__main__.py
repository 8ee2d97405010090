"""Two-tower retriever training: ``python -m pipelines.retrieval --data-dir D`` (configs/retriever.yaml).

The command line of the stage; the work is :func:`pipelines.retrieval.stage.run`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from pipelines.common.cli import exit_on_error
from pipelines.common.config import RetrieverConfig, dump_config, load_config
from pipelines.features.manifest import load_manifest
from pipelines.retrieval.stage import run

log = logging.getLogger(__name__)

app = typer.Typer(add_completion=False, help=__doc__.split("\n")[0])


@app.command()
def main(
    data_dir: Annotated[Path, typer.Option(help="Data directory holding features/.")],
    config: Annotated[Path | None, typer.Option(help="YAML config (configs/retriever.yaml).")] = Path(
        "configs/retriever.yaml"
    ),
    resume: Annotated[
        bool, typer.Option(help="Continue the experiment's last run from its checkpoint.")
    ] = False,
) -> None:
    """Train the two-tower retriever with Ray Train + TorchRec, measure recall, register it."""
    from pipelines.common.runtime import ray_session, setup_logging

    setup_logging()
    with exit_on_error():
        cfg = load_config(config, RetrieverConfig)
        log.info("resolved config:\n%s", dump_config(cfg))
        load_manifest(data_dir)
        with ray_session():
            published = run(cfg, data_dir, resume=resume)
        r = published.recall
        typer.echo(f"test split {r.eval_set}: {r.queries} engaged rows, {r.corpus} posts")
        typer.echo(r.table())
        typer.echo(
            f"registered {published.model_name} version {published.version} (alias challenger); "
            f"MLflow run {published.run_id}; checkpoint {published.checkpoint}"
        )


if __name__ == "__main__":
    from pipelines.retrieval.__main__ import app as package_app

    package_app()
