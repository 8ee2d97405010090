"""End to end on a real local cluster: a head and a worker node (``ray start`` processes) plus an MLflow
server, a tiny pipeline submitted stage by stage with ``ray job submit``, the feed deployed with ``serve
deploy`` and fetched over HTTP, ``make retrain``'s loop (served logs → a new version → simulated users
online → a recorded decision), then everything stopped, and nothing of it left running.

Runs first in the session (tests/cluster sorts before the rest) and uses its own ports, so it never meets
the session's in-process Ray.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import mlflow
import psutil
import pytest
import requests
import yaml
from rich.console import Console

from cluster.demo import run_main_job
from cluster.local import ClusterSpec, LocalCluster, process_group_pids, ray_pids
from cluster.retrain import run_retrain
from pipelines.common.config import dump_config
from tests.conftest import REPO, assert_ui_serves_artifacts, tiny_config, train_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(1200)
def test_a_two_node_cluster_runs_the_pipeline_as_jobs_serves_a_feed_and_stops_cleanly(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "data.yaml").write_text(dump_config(tiny_config()))
    (configs / "train.yaml").write_text(dump_config(train_config(1)))
    serve_doc = yaml.safe_load((REPO / "configs" / "serve.yaml").read_text())
    serve_port = free_port()
    serve_doc["http_options"]["port"] = serve_port
    for d in serve_doc["applications"][0]["deployments"]:
        d["ray_actor_options"] = {"num_cpus": 0.25}
    (configs / "serve.yaml").write_text(yaml.safe_dump(serve_doc, sort_keys=False))
    spec = ClusterSpec(
        workers=1,
        gcs_port=free_port(),
        dashboard_port=free_port(),
        metrics_port=free_port(),
        agent_port=free_port(),
        client_port=free_port(),
        mlflow_port=free_port(),
        data_dir=tmp_path / "data",
    )
    config_files = (configs / "data.yaml", configs / "train.yaml", configs / "serve.yaml")
    cluster = LocalCluster(tmp_path / "state")
    try:
        job = run_main_job(cluster, spec, *config_files, Console(width=120))
        status = cluster.status()
        assert status["ray"]["up"]
        assert status["ray"]["workers"] == 1
        assert status["mlflow"]["up"]
        headers = cluster.ray_headers()
        nodes = requests.get(
            f"{status['ray']['dashboard']}/nodes?view=summary", headers=headers, timeout=10
        ).json()
        assert sum(n["raylet"]["state"] == "ALIVE" for n in nodes["data"]["summary"]) == 2
        jobs = requests.get(f"{status['ray']['dashboard']}/api/jobs/", headers=headers, timeout=10).json()
        assert {j["status"] for j in jobs} == {"SUCCEEDED"}
        assert len(jobs) == 7  # synth, ingest, features, train, retriever, promote, promote retriever
        # The feed came from the promoted model, registered in the cluster's MLflow server.
        assert job.feed_url == f"http://127.0.0.1:{serve_port}"
        for body in job.feeds:
            assert body["items"]
            assert not body["fallback"]
            assert body["model"]["version"] == "1"
        models = requests.get(
            f"{spec.mlflow_url}/api/2.0/mlflow/registered-models/get",
            params={"name": "feed-ranker"},
            timeout=10,
        ).json()["registered_model"]
        assert {a["alias"] for a in models["aliases"]} >= {"champion", "challenger"}
        # The retriever was registered and promoted too, and the feed retrieves with its index.
        retriever = requests.get(
            f"{spec.mlflow_url}/api/2.0/mlflow/registered-models/get",
            params={"name": "feed-retriever"},
            timeout=10,
        ).json()["registered_model"]
        assert {a["alias"] for a in retriever["aliases"]} >= {"champion", "challenger"}
        health = requests.get(f"{job.feed_url}/healthz", timeout=10).json()
        assert health["retriever"]["version"] == "1"
        assert health["retriever"]["posts"] > 0
        # Auth is on: no token, no feed.
        assert requests.get(f"{job.feed_url}/feed/{job.viewers[0]}", timeout=10).status_code == 401
        # Continual learning: the served logs → version 2 → online test → a decision, recorded.
        names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
        env_before = {k: os.environ.get(k) for k in names}
        client_before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
        decision = run_retrain(cluster, spec, *config_files, Console(width=120), sim_users=12)
        # Nothing of the cluster's MLflow leaks into the tests that run after this one.
        assert {k: os.environ.get(k) for k in names} == env_before
        assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == client_before
        assert decision["version"] == "2"
        assert decision["previous_champion"] == "1"
        assert decision["decision"] in {"promoted", "rejected"}
        assert "online:" in decision["reason"]  # both halves of the gate were applied
        # The retriever was retrained on the same features and decided on by its recall gate.
        assert decision["retriever"]["version"] == "2"
        assert decision["retriever"]["decision"] in {"promoted", "rejected"}
        assert "recall@" in decision["retriever"]["reason"]
        exp = requests.get(
            f"{spec.mlflow_url}/api/2.0/mlflow/experiments/get-by-name",
            params={"experiment_name": "feed-retrain"},
            timeout=10,
        ).json()["experiment"]
        found = requests.post(
            f"{spec.mlflow_url}/api/2.0/mlflow/runs/search",
            json={"experiment_ids": [exp["experiment_id"]]},
            timeout=10,
        ).json()["runs"]
        tags = {t["key"]: t["value"] for t in found[0]["data"]["tags"]}
        retrain_run = found[0]["info"]["run_id"]
        assert tags["decision"] == decision["decision"]
        assert tags["simulation_run"] == decision["simulation_run"]
        assert tags["retriever.decision"] == decision["retriever"]["decision"]
        # The feed is back to its configured arms after the online test.
        assert requests.get(f"{job.feed_url}/healthz", timeout=10).status_code == 200
        started = ray_pids(spec.gcs_port)  # gcs, raylets, agents, workers, Serve actors
        assert len(started) > 6
    finally:
        mlflow_pid = cluster.state.get("mlflow", {}).get("pid")
        stopped = cluster.down()
    assert set(stopped) == {"ray", "mlflow"}
    assert [p for p in started if psutil.pid_exists(p)] == []  # not one left behind, orphans included
    assert mlflow_pid is not None
    assert not psutil.pid_exists(mlflow_pid)
    assert process_group_pids(mlflow_pid) == []  # nor anything the server forked
    for port in (spec.gcs_port, spec.dashboard_port, spec.mlflow_port, serve_port):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
    assert not (tmp_path / "state" / "state.json").exists()
    from ray._common.utils import get_ray_address_file

    current = Path(get_ray_address_file(None))  # `ray.init()` must not try to join the stopped cluster
    assert not current.exists() or not current.read_text().strip().endswith(f":{spec.gcs_port}")
    # `make ui` with the cluster down: the runs and their artifacts (logged through the cluster's server).
    assert_ui_serves_artifacts(spec.data_dir, retrain_run)
