"""Continual learning on the local cluster: ``python -m cluster.retrain`` (``make retrain``), after
``make demo`` and some served traffic (``make simulate``).

1. ``ingest`` → ``features`` → ``train`` as Ray jobs: the raw logs now include what the feed served and what
   its users did (``D/raw/*/serving/``), so the new version learns from them; it is registered as
   ``challenger`` (with its offline evaluation);
2. ``retrieval`` → ``promote --retriever`` as Ray jobs: a new ``feed-retriever`` version on the same
   features, promoted only if its recall on the test split beats the champion's (``registry.gate_k``,
   ``min_gain``; the replicas swap their index within ``retrieval.index_poll_s``), so both arms of the
   online test retrieve alike;
3. online: the feed is redeployed with ``model.challenger_traffic`` (0.5 by default) and simulated users
   (:mod:`pipelines.simulate`) read it; their report is saved next to the run;
4. ``promote`` as a Ray job with that report: ``champion`` moves only if the new version wins offline (the
   gate on the test split) **and** online (:func:`pipelines.promote.gate.online_gate`);
5. the feed is redeployed as configured. An MLflow run (experiment ``feed-retrain``) records every step: the
   stages' durations, the training run, the simulation run and report, the decision and its reason.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

from cluster.demo import deploy, submit, wait_ready
from cluster.local import ClusterSpec, LocalCluster
from pipelines.common.runtime import TASK_CPUS_ENV

#: CPUs per batch-stage task while the feed holds fractions of every node's CPUs (whole-CPU tasks waited
#: for them: ingest took 728 s beside the feed, 21 s alone).
BESIDE_SERVING_TASK_CPUS = 0.25


def wait_for_version(base: str, arm: str, version: str, timeout_s: float = 300) -> None:
    """Until ``/healthz`` says ``arm`` is served by ``version`` (aliases are re-read every model.poll_s)."""
    import requests

    deadline = time.time() + timeout_s
    models: dict[str, Any] = {}
    while time.time() < deadline:
        try:  # replicas being replaced (the redeploy) may not answer for a while
            r = requests.get(f"{base}/healthz", timeout=30)
            models = r.json().get("models", {}) if r.ok else {}
        except requests.RequestException:
            models = {}
        if str(models.get(arm)) == version:
            return
        time.sleep(2)
    raise TimeoutError(f"{arm} is not served by version {version} after {timeout_s:.0f} s (serving {models})")


@dataclass
class Retrain:
    """One retrain on a running cluster: where its jobs go and what it writes."""

    cluster: LocalCluster
    data_dir: Path
    dashboard: str
    env: dict[str, str]
    console: Console
    out: Path  # D/retrain/<time>/: online.json, online.md, decision.json
    seconds: dict[str, float] = field(default_factory=dict)

    def submit(self, module: str, *args: str, stage: str | None = None) -> None:
        """One stage (``pipelines.<module>``, named ``stage`` in the timings) as a Ray job, its tasks sized
        to run beside the feed (:func:`pipelines.common.runtime.task_cpus`)."""
        stage = stage or module
        entrypoint = ["python", "-m", f"pipelines.{module}", "--data-dir", str(self.data_dir), *args]
        job_env = {TASK_CPUS_ENV: str(BESIDE_SERVING_TASK_CPUS)}
        self.seconds[stage] = submit(self.dashboard, entrypoint, stage, self.console, self.env, job_env)

    def train_challenger(self, config: Path, train_config: Path, model_name: str) -> Any:
        """ingest → features → train as Ray jobs over the raw logs (served traffic included); the version
        training registered as challenger."""
        from pipelines.common import tracking

        self.submit("ingest", "--config", str(config))
        self.submit("features", "--config", str(config))
        self.submit("train", "--config", str(train_config))
        candidate = tracking.version_of(model_name, tracking.CHALLENGER)
        assert candidate is not None, "training registered no challenger"
        return candidate

    def retrain_retriever(self, retriever_config: Path) -> dict[str, Any]:
        """A new retriever version on the features just built, and its promotion by recall; what was
        decided (the version's promotion tags)."""
        from mlflow import MlflowClient

        from pipelines.common import tracking
        from pipelines.common.config import RetrieverConfig, load_config

        name = load_config(retriever_config, RetrieverConfig).registry.model_name
        before = tracking.version_of(name, tracking.CHALLENGER)
        self.submit("retrieval", "--config", str(retriever_config))
        self.submit("promote", "--retriever", "--config", str(retriever_config), stage="promote retriever")
        candidate = tracking.version_of(name, tracking.CHALLENGER)
        assert candidate is not None, "the retrieval stage registered no challenger"
        assert before is None or candidate.version != before.version, "no new retriever version"
        tags = MlflowClient().get_model_version(name, str(candidate.version)).tags
        return {
            "version": str(candidate.version),
            "decision": tags.get("promotion.decision"),
            "reason": tags.get("promotion.reason"),
        }

    def test_online(
        self, version: str, serve_config: Path, data_cfg: Any, sim: Any, challenger_traffic: float
    ) -> tuple[Path, str]:
        """The feed redeployed with ``version`` as challenger for a share of users, simulated users reading
        it; returns the report's path and the simulation's MLflow run. The feed is redeployed as
        configured afterwards, whatever happened."""
        from pipelines.simulate.report import markdown
        from pipelines.simulate.stage import log_to_mlflow
        from pipelines.simulate.stage import run as simulate

        self.console.rule(f"online: version {version} as challenger for {challenger_traffic:.0%} of users")
        t0 = time.perf_counter()
        doc = yaml.safe_load(serve_config.read_text())
        doc["applications"][0]["args"]["model"]["challenger_traffic"] = challenger_traffic
        ab = self.cluster.state_dir / "serve-retrain.yaml"
        ab.write_text(yaml.safe_dump(doc, sort_keys=False))
        http = doc.get("http_options", {})
        base = f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"
        try:
            deploy(self.dashboard, ab, self.data_dir, self.cluster.state_dir, self.env)
            wait_ready(base)
            wait_for_version(base, "challenger", version)
            report = simulate(base, self.data_dir, data_cfg, self.cluster.jwt_secret(), sim)
            (self.out / "online.json").write_text(json.dumps(report, indent=2))
            (self.out / "online.md").write_text(markdown(report))
            sim_run = log_to_mlflow(report, self.data_dir, base)
            self.console.print(markdown(report))
            self.seconds["online"] = time.perf_counter() - t0
        finally:
            deploy(self.dashboard, serve_config, self.data_dir, self.cluster.state_dir, self.env)
        return self.out / "online.json", sim_run

    def record(self, decision: dict[str, Any], params: dict[str, Any]) -> None:
        """``decision.json`` and an MLflow run in ``feed-retrain`` with the stages' times and the outcome."""
        import mlflow

        from pipelines.common import tracking

        (self.out / "decision.json").write_text(json.dumps(decision, indent=2))
        exp = tracking.experiment_id("feed-retrain", self.data_dir)
        with mlflow.start_run(experiment_id=exp, run_name=f"retrain-v{decision['version']}"):
            mlflow.log_params(params)
            mlflow.log_metrics({f"seconds/{k}": v for k, v in self.seconds.items()})
            keys = ("decision", "reason", "previous_champion", "train_run", "simulation_run")
            mlflow.set_tags({k: str(decision[k])[:5000] for k in keys})
            for k, v in (decision.get("retriever") or {}).items():
                mlflow.set_tag(f"retriever.{k}", str(v)[:5000])
            mlflow.log_artifacts(str(self.out), "retrain")


def run_retrain(
    cluster: LocalCluster,
    spec: ClusterSpec,
    config: Path,
    train_config: Path,
    serve_config: Path,
    console: Console,
    sim_users: int = 300,
    challenger_traffic: float = 0.5,
    retriever_config: Path | None = Path("configs/retriever.yaml"),
) -> dict[str, Any]:
    """Train a challenger on the served logs, test it online, promote it only if it wins offline and online;
    retrain the retriever too (``retriever_config``; None: keep it); returns the decision (also on the
    version's tags and in an MLflow run)."""
    from mlflow import MlflowClient

    from pipelines.common import tracking
    from pipelines.common.config import DataConfig, TrainConfig, load_config
    from pipelines.simulate.users import SimConfig

    data_dir = spec.data_dir = spec.data_dir.resolve()
    status = cluster.up(spec)
    with tracking.pointed_at(status["mlflow"]["url"]):  # this process talks to the cluster's server
        tracking.configure(data_dir)
        out = data_dir / "retrain" / time.strftime("%Y%m%dT%H%M%S")
        out.mkdir(parents=True, exist_ok=True)
        job = Retrain(cluster, data_dir, status["ray"]["dashboard"], cluster.client_env(), console, out)
        name = load_config(train_config, TrainConfig).registry.model_name
        before = tracking.version_of(name, tracking.CHAMPION)
        candidate = job.train_challenger(config, train_config, name)
        version = str(candidate.version)
        retriever = job.retrain_retriever(retriever_config) if retriever_config is not None else None
        sim = SimConfig(users=sim_users, max_sessions=3)
        data_cfg = load_config(config, DataConfig)
        report, sim_run = job.test_online(version, serve_config, data_cfg, sim, challenger_traffic)
        job.submit(
            "promote", "--config", str(train_config), "--version", version, "--online-report", str(report)
        )
        tags = MlflowClient().get_model_version(name, version).tags
        decision = {
            "version": version,
            "previous_champion": str(before.version) if before else None,
            "decision": tags.get("promotion.decision"),
            "reason": tags.get("promotion.reason"),
            "seconds": job.seconds,
            "simulation_run": sim_run,
            "train_run": candidate.run_id,
            "retriever": retriever,
        }
        params = {"version": version, "challenger_traffic": challenger_traffic, "sim_users": sim_users}
        job.record(decision, params)
        return decision


def main(
    data_dir: Annotated[Path, typer.Option(help="The demo's data dir.")] = Path("data/demo"),
    config: Annotated[Path, typer.Option(help="configs/data.yaml")] = Path("configs/data.yaml"),
    train_config: Annotated[Path, typer.Option(help="configs/train.yaml")] = Path("configs/train.yaml"),
    serve_config: Annotated[Path, typer.Option(help="configs/serve.yaml")] = Path("configs/serve.yaml"),
    users: Annotated[int, typer.Option(help="Simulated users in the online test.")] = 300,
    workers: Annotated[int, typer.Option(help="Ray worker nodes besides the head.")] = 1,
    retriever_config: Annotated[
        Path, typer.Option(help="configs/retriever.yaml (the retriever is retrained too)")
    ] = Path("configs/retriever.yaml"),
) -> None:
    """Retrain on the served logs, test the new version online, promote it only if it wins both ways."""
    console = Console(width=None if sys.stdout.isatty() else 120)
    spec = ClusterSpec(workers=workers, data_dir=data_dir)
    files = (config, train_config, serve_config)
    decision = run_retrain(LocalCluster(), spec, *files, console, users, retriever_config=retriever_config)
    console.print_json(json.dumps(decision))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    typer.run(main)
