"""Ingestion: ``python -m pipelines.ingest --data-dir D``: ``D/raw/`` → ``D/clean/`` + ``D/quarantine/``.

The command line of the stage; the work is :func:`pipelines.ingest.stage.run`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from pipelines.common.cli import exit_on_error
from pipelines.common.config import DataConfig, dump_config, load_config
from pipelines.ingest.stage import run
from pipelines.ingest.tables import check_raw

log = logging.getLogger(__name__)

app = typer.Typer(add_completion=False, help=__doc__.split("\n")[0])


@app.command()
def main(
    data_dir: Annotated[
        Path, typer.Option(help="Data directory holding raw/; clean/ and quarantine/ are written.")
    ],
    config: Annotated[Path | None, typer.Option(help="YAML config (configs/data.yaml).")] = None,
) -> None:
    """Validate raw logs into clean/ and quarantine/ with a row-accounting summary."""
    from pipelines.common.runtime import ray_session, setup_logging

    setup_logging()
    with exit_on_error():
        cfg = load_config(config, DataConfig)
        log.info("resolved config:\n%s", dump_config(cfg.ingest))
        check_raw(data_dir)
        with ray_session():
            summary = run(cfg.ingest, data_dir)
        log.info("totals: %s (summary in %s)", summary["totals"], data_dir / "ingest_summary.json")


if __name__ == "__main__":
    app()
