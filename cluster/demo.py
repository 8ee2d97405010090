"""The main job on a local cluster: ``python -m cluster.demo`` (what ``make demo`` runs).

1. start the local cluster (:mod:`cluster.local`: Ray head + worker nodes, MLflow server) unless it runs;
2. submit each stage with ``ray job submit`` (this checkout as the job's working dir, the data dir by
   absolute path): synth → ingest → features → train (Ray Train + TorchRec; evaluation against the
   baselines; registered as ``feed-ranker@challenger`` in the MLflow server) → promote (to ``champion`` if it
   beats the current one);
3. ``serve deploy`` the feed (configs/serve.yaml, data dir made absolute) and wait until it answers;
4. fetch feeds for sample users over HTTP with minted tokens and print them, the offline quality table,
   the time of every stage and the URLs (feed + OpenAPI docs, MLflow UI, Ray dashboard).

Everything stays up until ``make stop``. The stages are the same CLIs a real cluster runs
(``ray job submit --address http://<head>:8265 --working-dir . -- python -m pipelines.train ...``).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from cluster.local import REPO, ClusterSpec, LocalCluster, venv_bin

#: A resource only the head node has (Ray's own): asking for a sliver of it places an actor there.
HEAD_NODE = "node:__internal_head__"
#: Never uploaded with the job's working dir (data, environments, local state).
EXCLUDES = ["data/", ".venv/", ".git/", "mlruns/", ".cluster/", "bench/out/", "*.db", "__pycache__/"]


class PeakRSS:
    """Samples, every ``every_s``, the summed RSS of the cluster's processes (Ray's and the MLflow server's)
    while a stage runs: a machine-level "how much memory did this stage need" (shared pages, e.g. the
    object store, count once per process that maps them, so this errs high)."""

    def __init__(self, gcs_port: int, extra_pids: list[int], every_s: float = 0.5) -> None:
        import threading

        self.gcs_port, self.extra, self.every_s = gcs_port, extra_pids, every_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        import psutil

        from cluster.local import ray_pids

        total = 0
        for pid in [*ray_pids(self.gcs_port), *self.extra]:
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.Error:
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def submit(
    dashboard: str,
    entrypoint: list[str],
    name: str,
    console: Console,
    env: dict[str, str],
    job_env: dict[str, str] | None = None,
) -> float:
    """``ray job submit`` one stage, its logs streamed here; returns its wall time, raises on failure.
    ``job_env``: environment variables of the job itself (its runtime environment)."""
    runtime_env: dict[str, object] = {"excludes": EXCLUDES}
    if job_env:
        runtime_env["env_vars"] = job_env
    cmd = [
        venv_bin("ray"),
        "job",
        "submit",
        f"--address={dashboard}",
        f"--submission-id={name}-{int(time.time())}",
        "--working-dir=.",
        f"--runtime-env-json={json.dumps(runtime_env)}",
        "--",
        *entrypoint,
    ]
    console.rule(f"{name}: ray job submit -- {shlex.join(entrypoint)}")
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"stage {name} failed (ray job submit exited {done.returncode}); logs above")
    return time.perf_counter() - t0


def deploy(
    dashboard: str, serve_config: Path, data_dir: Path, state_dir: Path, env: dict[str, str]
) -> tuple[Path, dict]:
    """``serve deploy`` the Serve config onto the local demo cluster, its data dir made absolute and the
    page's demo sign-in on (``auth.dev_tokens``); returns the file deployed."""
    doc = yaml.safe_load(serve_config.read_text())
    for app in doc["applications"]:
        app["args"]["data_dir"] = str(data_dir)
        # A demo cluster: the page at / lets a visitor sign in as any user (off in configs/serve.yaml).
        app["args"].setdefault("auth", {})["dev_tokens"] = True
    # Every node of the local cluster is this machine: one proxy (HAProxy, serve/runtime.py) binds the
    # Serve port and its stats and metrics ports; one per node would fight over them and crash in a loop.
    doc["proxy_location"] = "HeadOnly"
    # The feed's replicas on the head node too: a fraction of a CPU held on every node would leave no node
    # a whole CPU, and some of Ray Data's own tasks (Parquet metadata sampling) ask for exactly one, so
    # make retrain's stages would wait forever beside the feed.
    for app in doc["applications"]:
        for d in app.get("deployments", []):
            d.setdefault("ray_actor_options", {}).setdefault("resources", {})[HEAD_NODE] = 0.001
    out = state_dir / "serve.yaml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    subprocess.run(
        [venv_bin("serve"), "deploy", str(out), f"--address={dashboard}"], cwd=REPO, env=env, check=True
    )
    return out, doc


def wait_ready(base: str, timeout_s: float = 300) -> None:
    import requests

    deadline = time.time() + timeout_s
    last = ""
    while time.time() < deadline:
        try:
            r = requests.get(f"{base}/healthz", timeout=5)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:200]}"
        except requests.RequestException as e:
            last = str(e)
        time.sleep(2)
    raise TimeoutError(f"the feed at {base} did not become healthy in {timeout_s:.0f} s (last: {last})")


@dataclass
class MainJob:
    """What the main job ran and where it left things."""

    seconds: dict[str, float]
    peak_rss: dict[str, int]  # bytes, summed over the cluster's processes, per stage
    status: dict[str, Any]  # cluster.local status: URLs
    feed_url: str
    viewers: list[int]
    feeds: list[dict[str, Any]]
    auth: Any  # serve.auth.TokenAuth of the deployed feed


def run_main_job(
    cluster: LocalCluster,
    spec: ClusterSpec,
    config: Path,
    train_config: Path,
    serve_config: Path,
    console: Console,
    users: int | None = None,
    retriever_config: Path = Path("configs/retriever.yaml"),
) -> MainJob:
    """Cluster up → every stage as a Ray job → serve deploy → feeds for two sample users over HTTP."""

    from pipelines.demo import fetch_feed, sample_viewers
    from serve.auth import TokenAuth

    data_dir = spec.data_dir = spec.data_dir.resolve()
    seconds: dict[str, float] = {}
    peak_rss: dict[str, int] = {}
    t0 = time.perf_counter()
    console.rule("cluster: Ray head + workers, MLflow server")
    status = cluster.up(spec)
    seconds["cluster up"] = time.perf_counter() - t0
    mlflow_pid = [int(status["mlflow"]["pid"])] if "pid" in status.get("mlflow", {}) else []
    dashboard = status["ray"]["dashboard"]
    d, c, tc, rc = str(data_dir), str(config), str(train_config), str(retriever_config)
    stages = {
        "synth": ["python", "-m", "pipelines.synth", "--data-dir", d, "--config", c]
        + (["--users", str(users)] if users else []),
        "ingest": ["python", "-m", "pipelines.ingest", "--data-dir", d, "--config", c],
        "features": ["python", "-m", "pipelines.features", "--data-dir", d, "--config", c],
        "train": ["python", "-m", "pipelines.train", "--data-dir", d, "--config", tc],
        "retriever": ["python", "-m", "pipelines.retrieval", "--data-dir", d, "--config", rc],
        "promote": ["python", "-m", "pipelines.promote", "--data-dir", d, "--config", tc],
        "promote retriever": [
            "python",
            "-m",
            "pipelines.promote",
            "--retriever",
            "--data-dir",
            d,
            "--config",
            rc,
        ],
    }
    for name, entrypoint in stages.items():
        with PeakRSS(spec.gcs_port, mlflow_pid) as rss:
            seconds[name] = submit(dashboard, entrypoint, name, console, cluster.client_env())
        peak_rss[name] = rss.peak
    console.rule("serve deploy")
    t1 = time.perf_counter()
    with PeakRSS(spec.gcs_port, mlflow_pid) as rss:
        _, doc = deploy(dashboard, serve_config, data_dir, cluster.state_dir, cluster.client_env())
        http = doc.get("http_options", {})
        base = f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"
        wait_ready(base)
    seconds["deploy"] = time.perf_counter() - t1
    peak_rss["deploy"] = rss.peak
    args = doc["applications"][0]["args"]
    auth = TokenAuth(cluster.jwt_secret(), args.get("auth", {}).get("issuer", "ray-feed"))
    viewers = sample_viewers(data_dir, 2)
    feeds = [fetch_feed(base, auth, viewer).json() for viewer in viewers]
    seconds["total"] = time.perf_counter() - t0
    return MainJob(seconds, peak_rss, status, base, viewers, feeds, auth)


def main(
    data_dir: Annotated[Path, typer.Option(help="Data dir shared by the cluster's nodes.")] = Path(
        "data/demo"
    ),
    config: Annotated[Path, typer.Option(help="configs/data.yaml")] = Path("configs/data.yaml"),
    train_config: Annotated[Path, typer.Option(help="configs/train.yaml")] = Path("configs/train.yaml"),
    retriever_config: Annotated[Path, typer.Option(help="configs/retriever.yaml")] = Path(
        "configs/retriever.yaml"
    ),
    serve_config: Annotated[Path, typer.Option(help="configs/serve.yaml")] = Path("configs/serve.yaml"),
    workers: Annotated[int, typer.Option(help="Ray worker nodes besides the head.")] = 1,
    users: Annotated[int | None, typer.Option(help="Override synth.users (smaller: faster).")] = None,
) -> None:
    """Start the local cluster, run every stage as a Ray job, deploy the feed, print real feeds."""
    from pipelines.demo import feed_table

    console = Console(width=None if sys.stdout.isatty() else 120)
    spec = ClusterSpec(workers=workers, data_dir=data_dir)
    job = run_main_job(
        LocalCluster(), spec, config, train_config, serve_config, console, users, retriever_config
    )
    for body in job.feeds:
        console.print(feed_table(body))
    quality = sorted((spec.data_dir / "evaluation").glob("*/quality.md"), key=lambda p: p.stat().st_mtime)
    if quality:
        console.rule("offline quality (test split)")
        console.print(Markdown(quality[-1].read_text()))
    times = Table(title="Wall time and peak memory by stage", title_justify="left")
    times.add_column("stage")
    times.add_column("seconds", justify="right")
    times.add_column("peak RSS, cluster (GiB)", justify="right")
    for name, s in job.seconds.items():
        rss = job.peak_rss.get(name)
        times.add_row(name, f"{s:.0f}", f"{rss / 2**30:.1f}" if rss else "")
    console.print(times)
    token = job.auth.mint(job.viewers[0], ttl_s=3600)
    base = job.feed_url
    console.print(
        f"Feed API:    {base}/feed/{{user_id}}   (OpenAPI docs: {base}/docs)\n"
        f"MLflow UI:   {job.status['mlflow']['url']}   "
        "(promote: Models → feed-ranker or feed-retriever → a version → aliases → champion)\n"
        f"Ray:         {job.status['ray']['dashboard']}\n"
        f"Try:         curl -H 'Authorization: Bearer {token}' '{base}/feed/{job.viewers[0]}?limit=5'\n"
        "Stop it all:  make stop\n"
        f"The page:    {base}/   (sign in as a demo user, e.g. User {job.viewers[0]}; scroll, like, hide)",
        soft_wrap=True,
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    typer.run(main)
