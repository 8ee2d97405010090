"""Promotion: ``python -m pipelines.promote --data-dir D [--version N] [--force] [--reason TEXT]``.

The command line of the stage; the work is :func:`pipelines.promote.stage.run`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.common.cli import exit_on_error
from pipelines.common.config import TrainConfig, load_config
from pipelines.promote.stage import run

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
    from pipelines.common.runtime import setup_logging

    setup_logging()
    with exit_on_error():
        cfg = load_config(config, TrainConfig)
        import json

        online = json.loads(online_report.read_text()) if online_report is not None else None
        d = run(data_dir, cfg, version, force, reason, online)
        verb = "promoted to champion" if d.promoted else "not promoted"
        typer.echo(f"{cfg.registry.model_name} version {d.candidate} {verb}: {d.reason}")


if __name__ == "__main__":
    app()
