"""Synthetic social network and its interaction logs: ``python -m pipelines.synth --data-dir D``.

The command line of the stage; the work is :func:`pipelines.synth.stage.run`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from pipelines.common.config import DataConfig, dump_config, load_config
from pipelines.synth.stage import run

log = logging.getLogger(__name__)

app = typer.Typer(add_completion=False, help=__doc__.split("\n")[0])


@app.command()
def main(
    data_dir: Annotated[Path, typer.Option(help="Data directory; raw/ and truth/ are written here.")],
    config: Annotated[Path | None, typer.Option(help="YAML config (configs/data.yaml).")] = None,
    users: Annotated[int | None, typer.Option(help="Override synth.users.")] = None,
    days: Annotated[int | None, typer.Option(help="Override synth.days.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override synth.seed.")] = None,
) -> None:
    """Generate a synthetic social network and its interaction logs."""
    from pipelines.common.cli import exit_on_error
    from pipelines.common.runtime import ray_session, setup_logging

    setup_logging()
    with exit_on_error():
        cfg = load_config(config, DataConfig, {"synth.users": users, "synth.days": days, "synth.seed": seed})
        log.info("resolved config:\n%s", dump_config(cfg.synth))
        with ray_session():
            summary = run(cfg.synth, data_dir)
        log.info("wrote %s", summary)


if __name__ == "__main__":
    app()
