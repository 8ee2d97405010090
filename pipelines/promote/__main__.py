"""Promotion: ``python -m pipelines.promote --data-dir D [--retriever] [--version N] [--force]``.

The command line of the stage; the work is :func:`pipelines.promote.stage.run` (the ranker) or
:func:`pipelines.promote.stage.run_retriever` (``--retriever``, with configs/retriever.yaml).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.common.cli import exit_on_error
from pipelines.common.config import RetrieverConfig, TrainConfig, load_config
from pipelines.promote.stage import run, run_retriever

app = typer.Typer(add_completion=False, help=__doc__.split("\n")[0])


@app.command()
def main(
    data_dir: Annotated[Path, typer.Option(help="Data directory (its test split is the evaluation set).")],
    config: Annotated[
        Path | None,
        typer.Option(help="YAML config (configs/train.yaml; configs/retriever.yaml with --retriever)."),
    ] = None,
    retriever: Annotated[
        bool, typer.Option(help="Promote the two-tower retriever (feed-retriever) by its recall.")
    ] = False,
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
        if retriever:
            if online_report is not None:
                raise typer.BadParameter("the retriever's gate is offline only", param_hint="--online-report")
            rcfg = load_config(config or Path("configs/retriever.yaml"), RetrieverConfig)
            d = run_retriever(data_dir, rcfg, version, force, reason)
            verb = "promoted to champion" if d.promoted else "not promoted"
            typer.echo(f"{rcfg.registry.model_name} version {d.candidate} {verb}: {d.reason}")
            return
        cfg = load_config(config or Path("configs/train.yaml"), TrainConfig)
        import json

        online = json.loads(online_report.read_text()) if online_report is not None else None
        d = run(data_dir, cfg, version, force, reason, online)
        verb = "promoted to champion" if d.promoted else "not promoted"
        typer.echo(f"{cfg.registry.model_name} version {d.candidate} {verb}: {d.reason}")


if __name__ == "__main__":
    app()
