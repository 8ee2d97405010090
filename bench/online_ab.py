"""Online A/B figures: ``python -m bench.online_ab [--experiment model|suggestions]`` (after ``make demo``;
part of ``make bench``).

On the local cluster and data of ``make demo`` (started if needed; the demo must have run once), redeploys
the feed with half the users in a holdout arm, runs :mod:`pipelines.simulate` against it over HTTP, writes
the experiment's section of ``--out``, logs the run to MLflow, and deploys the demo's configuration again:

- ``model``: the ranker (champion) against reverse-chronological (``model.chronological_traffic: 0.5``);
- ``suggestions``: the mixed feed (friends' posts and the retriever's suggestions) against friends' posts
  only (``retrieval.holdout_traffic: 0.5``), both ranked by the champion.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from bench.report import machine, write_section
from pipelines.common.runtime import REPO

#: experiment → (args section, traffic key, simulate's split, what the holdout arm gets)
EXPERIMENTS = {
    "model": (
        "model",
        "chronological_traffic",
        "model",
        "a stable hash-half of users served newest-first with no model",
    ),
    "suggestions": (
        "retrieval",
        "holdout_traffic",
        "retrieval",
        "a stable hash-half of users served their friends' posts only, no suggestions; both halves ranked "
        "by the champion",
    ),
}
TITLES = {"model": "## Online A/B (issue 5)", "suggestions": "## Online A/B: suggestions (issue 17)"}


#: The differences shown per seed.
SEED_METRICS = ("dwell_s_per_session", "hide_rate", "like_rate", "sessions")


def by_seed(reps: list[dict[str, Any]]) -> list[str]:
    """Each simulation's (seed's) difference to the control, with its interval, per headline metric."""
    arm = next(iter(reps[0]["vs_control"]))
    lines = [
        f"Every seed (users no earlier seed simulated, other behaviour drawn), {arm} − {reps[0]['control']}:",
        "",
        "| seed | users | " + " | ".join(SEED_METRICS) + " |",
        "|---:|---:|" + "---|" * len(SEED_METRICS),
    ]
    for rep in reps:
        d = rep["vs_control"][arm]
        cells = " | ".join(
            f"{d[m]['diff']:+.4f} [{d[m]['ci95'][0]:+.4f}, {d[m]['ci95'][1]:+.4f}]" for m in SEED_METRICS
        )
        n = sum(a["users"] for a in rep["arms"].values())
        lines.append(f"| {rep['config']['seed']} | {n} | {cells} |")
    return [*lines, ""]


def main(
    data_dir: Annotated[Path, typer.Option(help="The demo's data dir.")] = Path("data/demo"),
    users: Annotated[int, typer.Option(help="Simulated users.")] = 600,
    max_sessions: Annotated[int, typer.Option(help="Sessions per user at most.")] = 4,
    seeds: Annotated[
        int, typer.Option(help="Simulations in turn (seeds 0..N-1), each on users not yet simulated.")
    ] = 1,
    experiment: Annotated[
        str, typer.Option(help="model: ranker vs chronological; suggestions: mixed vs friends only.")
    ] = "model",
    out: Annotated[Path, typer.Option(help="Markdown file to write the section into.")] = Path(
        "bench/RESULTS.md"
    ),
) -> None:
    """An online A/B on the demo's cluster: simulated users over HTTP, with 95% intervals."""
    if experiment not in EXPERIMENTS:
        raise typer.BadParameter(f"--experiment is one of {sorted(EXPERIMENTS)}")
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
    section, key, split, what = EXPERIMENTS[experiment]
    args = doc["applications"][0]["args"]
    # Only this experiment splits users: the other arms are off, so each user is in exactly one of two.
    args["model"]["challenger_traffic"] = args["model"]["chronological_traffic"] = 0.0
    args["retrieval"]["holdout_traffic"] = 0.0
    args[section][key] = 0.5
    ab = cluster.state_dir / "serve-ab.yaml"
    ab.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = cluster.client_env()
    deploy(dashboard, ab, data_dir, cluster.state_dir, env)
    base = f"http://{doc['http_options']['host']}:{doc['http_options']['port']}"
    wait_ready(base)
    try:
        reps, run_ids = [], []
        data_cfg = load_config(REPO / "configs" / "data.yaml", DataConfig)
        done: set[int] = set()  # each seed samples users no earlier seed touched
        for seed in range(seeds):
            cfg = SimConfig(users=users, max_sessions=max_sessions, split=split, seed=seed)
            reps.append(simulate(base, data_dir, data_cfg, cluster.jwt_secret(), cfg, done))
            done |= set(reps[-1]["user_ids"])
            run_ids.append(log_to_mlflow(reps[-1], data_dir, base))
        champion = version_of("feed-ranker", "champion")
        retriever = version_of("feed-retriever", "champion")
    finally:
        deploy(dashboard, serve_yaml, data_dir, cluster.state_dir, env)
    rep = reps[0]
    cmd = f"python -m bench.online_ab --experiment {experiment} --seeds {seeds}"
    text = "\n".join(
        [
            TITLES[experiment],
            "",
            f"Measured {dt.date.today().isoformat()} on {machine()}, with `{cmd}` after `make demo`: the "
            f"feed on the local cluster with `{section}.{key}: 0.5` ({what}), "
            f"{rep['config']['users']} simulated users of the demo world "
            "(`pipelines.simulate`: behaviour from the world's hidden engagement model, never the ranker; "
            f"up to {rep['config']['max_sessions']} sessions each, {rep['config']['page']} items per page) "
            f"over HTTP, {rep['seconds']:.0f} s (seed 0). Ranker: `feed-ranker` version "
            f"{champion.version if champion else '?'} (champion); `feed-retriever` version "
            f"{retriever.version if retriever else 'none'} (champion). MLflow runs "
            f"{', '.join(f'`{r}`' for r in run_ids)} (experiment `feed-online`).",
            "",
            markdown(rep),
            *(by_seed(reps) if seeds > 1 else []),
        ]
    )
    write_section(out, text)
    typer.echo(text)


if __name__ == "__main__":
    typer.run(main)
