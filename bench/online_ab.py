"""Online A/B figures: ``python -m bench.online_ab`` (after ``make demo``; part of ``make bench``).

On the local cluster and data of ``make demo`` (started if needed; the demo must have run once), redeploys
the feed with half the users in the reverse-chronological holdout arm (``model.chronological_traffic:
0.5``), runs :mod:`pipelines.simulate` against it over HTTP, writes the "Online A/B" section of ``--out``,
logs the run to MLflow, and deploys the demo's configuration again.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Annotated

import typer
import yaml

from bench.report import machine, write_section
from pipelines.common.runtime import REPO


def main(
    data_dir: Annotated[Path, typer.Option(help="The demo's data dir.")] = Path("data/demo"),
    users: Annotated[int, typer.Option(help="Simulated users.")] = 600,
    max_sessions: Annotated[int, typer.Option(help="Sessions per user at most.")] = 4,
    out: Annotated[Path, typer.Option(help="Markdown file to write the section into.")] = Path(
        "bench/RESULTS.md"
    ),
) -> None:
    """Ranker (champion) vs reverse-chronological, simulated users over HTTP, with 95% intervals."""
    from cluster.demo import deploy, wait_ready
    from cluster.local import ClusterSpec, LocalCluster
    from pipelines.common.config import DataConfig, load_config
    from pipelines.common.tracking import version_of
    from pipelines.simulate.report import markdown
    from pipelines.simulate.stage import log_to_mlflow
    from pipelines.simulate.stage import run as simulate
    from pipelines.simulate.users import SimConfig

    data_dir = data_dir.resolve()
    if not (data_dir / "online" / "manifest.json").exists():
        raise SystemExit(f"{data_dir}: run `make demo` first")
    cluster = LocalCluster()
    status = cluster.up(ClusterSpec(data_dir=data_dir))
    os.environ["MLFLOW_TRACKING_URI"] = status["mlflow"]["url"]
    dashboard = status["ray"]["dashboard"]
    serve_yaml = REPO / "configs" / "serve.yaml"
    doc = yaml.safe_load(serve_yaml.read_text())
    doc["applications"][0]["args"]["model"]["chronological_traffic"] = 0.5
    ab = cluster.state_dir / "serve-ab.yaml"
    ab.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = cluster.client_env()
    deploy(dashboard, ab, data_dir, cluster.state_dir, env)
    base = f"http://{doc['http_options']['host']}:{doc['http_options']['port']}"
    wait_ready(base)
    try:
        cfg = SimConfig(users=users, max_sessions=max_sessions)
        rep = simulate(
            base, data_dir, load_config(REPO / "configs" / "data.yaml", DataConfig), cluster.jwt_secret(), cfg
        )
        run_id = log_to_mlflow(rep, data_dir, base)
        champion = version_of("feed-ranker", "champion")
    finally:
        deploy(dashboard, serve_yaml, data_dir, cluster.state_dir, env)
    cmd = "python -m bench.online_ab"
    text = "\n".join(
        [
            "## Online A/B (issue 5)",
            "",
            f"Measured {dt.date.today().isoformat()} on {machine()}, with `{cmd}` after `make demo`: the "
            "feed on the local cluster with `model.chronological_traffic: 0.5` (a stable hash-half of users "
            f"served newest-first with no model), {rep['config']['users']} simulated users of the demo world "
            "(`pipelines.simulate`: behaviour from the world's hidden engagement model, never the ranker; "
            f"up to {rep['config']['max_sessions']} sessions each, {rep['config']['page']} items per page) "
            f"over HTTP, {rep['seconds']:.0f} s. Ranker: `feed-ranker` version "
            f"{champion.version if champion else '?'} (champion). MLflow run `{run_id}` (experiment "
            "`feed-online`).",
            "",
            markdown(rep),
        ]
    )
    write_section(out, text)
    typer.echo(text)


if __name__ == "__main__":
    typer.run(main)
