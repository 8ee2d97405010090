"""Online evaluation: simulated users read their feed through the real HTTP endpoint.

The command line of the stage; the work is :func:`pipelines.simulate.stage.run`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipelines.common.config import DataConfig, load_config
from pipelines.simulate.report import markdown
from pipelines.simulate.stage import log_to_mlflow, run
from pipelines.simulate.users import SimConfig


def main(
    data_dir: Annotated[Path, typer.Option(help="Data dir the feed serves (online/) and MLflow.")],
    url: Annotated[str, typer.Option(help="The feed's base URL.")] = "http://127.0.0.1:8000",
    config: Annotated[Path, typer.Option(help="The data config the world was generated with.")] = Path(
        "configs/data.yaml"
    ),
    users: Annotated[int, typer.Option(help="Simulated users.")] = 300,
    max_sessions: Annotated[int, typer.Option(help="Sessions per user at most.")] = 5,
    split: Annotated[
        str, typer.Option(help="Arms by: model (champion/challenger/chronological) or retrieval.")
    ] = "model",
    secret_env: Annotated[str, typer.Option(help="Env var with the feed's JWT secret.")] = "FEED_JWT_SECRET",
    out: Annotated[Path | None, typer.Option(help="Write report.json and report.md here.")] = None,
    mlflow_log: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="Log the run to MLflow.")] = True,
) -> None:
    """Simulated users read their feeds over HTTP; online metrics per arm with confidence intervals."""
    import os

    from pipelines.common.cli import exit_on_error
    from pipelines.common.runtime import setup_logging

    setup_logging()
    with exit_on_error():
        secret = os.environ.get(secret_env)
        if not secret:
            raise ValueError(f"{secret_env} is not set (the feed's token secret)")
        rep = run(
            url,
            data_dir,
            load_config(config, DataConfig),
            secret,
            SimConfig(users=users, max_sessions=max_sessions, split=split),
        )
        text = markdown(rep)
        typer.echo(text)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "report.json").write_text(json.dumps(rep, indent=2))
            (out / "report.md").write_text(text)
        if mlflow_log:
            typer.echo(f"MLflow run {log_to_mlflow(rep, data_dir, url)} (experiment feed-online)")


if __name__ == "__main__":
    typer.run(main)
