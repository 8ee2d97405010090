"""Features: ``python -m pipelines.features --data-dir D``: ``D/clean/`` → ``D/features/`` + ``D/online/``.

The command line of the stage; the work is :func:`pipelines.features.stage.run`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from pipelines.common import schema
from pipelines.common.cli import exit_on_error
from pipelines.common.config import DataConfig, dump_config, load_config
from pipelines.features.rows import read_clean
from pipelines.features.stage import run

log = logging.getLogger(__name__)

app = typer.Typer(add_completion=False, help=__doc__.split("\n")[0])


@app.command()
def main(
    data_dir: Annotated[
        Path, typer.Option(help="Data directory holding clean/; features/ and online/ are written.")
    ],
    config: Annotated[Path | None, typer.Option(help="YAML config (configs/data.yaml).")] = None,
) -> None:
    """Build point-in-time training examples and the online feature snapshot."""
    from pipelines.common.runtime import ray_session, setup_logging

    setup_logging()
    with exit_on_error():
        cfg = load_config(config, DataConfig)
        log.info("resolved config:\n%s", dump_config(cfg.features))
        for name in schema.TABLES:
            read_clean(data_dir / "clean", name, columns=[])
        with ray_session():
            manifest = run(cfg.features, data_dir)
        log.info("splits: %s", {k: v["rows"] for k, v in manifest["splits"].items()})


if __name__ == "__main__":
    app()
