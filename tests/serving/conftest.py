"""The feed deployed once per test session on the shared Ray instance, over a copy of the published tiny
world (online snapshot, features, MLflow registry with two ranker versions).

Two applications: ``feed`` at ``/`` (ranker in its own deployment behind a handle, challenger at 50%, the
page's demo sign-in on) and ``degraded`` at ``/degraded`` (ranker inside the ingress, aliases pointing
nowhere: every feed falls back; the demo sign-in off, as by default).
"""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from serve.auth import TokenAuth
from serve.ranking import arm_of
from serve.retrieval import RetrievalConfig, retrieve
from serve.store import EmbeddedStore
from tests.conftest import Runs

SECRET = "serving-tests-secret-0123456789abcdef"


@dataclass
class Feed:
    """A client for the deployed feed."""

    base: str
    data_dir: Path
    auth: TokenAuth
    champion: str
    challenger: str
    session: requests.Session

    def headers(self, user_id: int) -> dict[str, str]:
        return {"Authorization": "Bearer " + self.auth.mint(user_id)}

    def get(self, user_id: int, prefix: str = "", **params: Any) -> requests.Response:
        return self.session.get(
            f"{self.base}{prefix}/feed/{user_id}", params=params, headers=self.headers(user_id), timeout=30
        )

    def post(self, path: str, user_id: int, body: Any, prefix: str = "") -> requests.Response:
        return self.session.post(
            f"{self.base}{prefix}{path}", json=body, headers=self.headers(user_id), timeout=30
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def set_alias(data_dir: Path, alias: str, version: str) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{data_dir / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias("feed-ranker", alias, version)


@pytest.fixture(scope="session")
def store(serve_dir: Path) -> EmbeddedStore:
    return EmbeddedStore.load(serve_dir)


def users_with_feeds(store: EmbeddedStore, n: int, arm: str | None = None, minimum: int = 3) -> list[int]:
    out = []
    for u in store.users(np.array(sorted(store.snapshot.users)))["user_id"].tolist():
        if arm is not None and arm_of(u, 0.5) != arm:
            continue
        if len(retrieve(store, u, store.as_of_s + 60, RetrievalConfig()).post_ids) >= minimum:
            out.append(u)
        if len(out) == n:
            break
    assert len(out) == n, "the tiny world has too few users with a feed"
    return out


def jsonl_rows(root: Path) -> list[dict]:
    return [
        json.loads(line) for p in sorted(root.rglob("*.jsonl")) for line in p.read_text().splitlines() if line
    ]


@pytest.fixture(scope="session")
def serve_dir(published: Runs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("serving")
    for sub in ("features", "online"):
        shutil.copytree(published.data_dir / sub, d / sub)
    shutil.copy(published.data_dir / "mlflow.db", d / "mlflow.db")
    set_alias(d, "champion", str(published.resumed.version))
    set_alias(d, "challenger", str(published.first.version))
    return d


@pytest.fixture(scope="session")
def feed(ray_cluster: None, serve_dir: Path, published: Runs) -> Iterator[Feed]:
    from ray import serve

    from serve.app import compose

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    common = {"data_dir": str(serve_dir), "auth": {"secret": SECRET}, "store": {"poll_s": 0.2}}
    # A sliver of CPU each: the session's Ray (2 CPUs) must still run Ray Data tasks (1 CPU) meanwhile.
    small = [{"name": n, "ray_actor_options": {"num_cpus": 0.1}} for n in ("FeedIngress", "Ranker")]
    serve.run(
        compose(
            {
                **common,
                "auth": {"secret": SECRET, "dev_tokens": True},  # the page's demo sign-in (test_page.py)
                "model": {"poll_s": 0.5, "challenger_traffic": 0.5},
                "ranking": {"placement": "deployment", "timeout_s": 10.0},
            },
            small,
        ),
        name="feed",
        route_prefix="/",
    )
    serve.run(
        compose(
            {
                **common,
                "model": {"alias": "no-such-alias", "poll_s": 0.5},
                "ranking": {"placement": "ingress"},
            },
            small,
        ),
        name="degraded",
        route_prefix="/degraded",
    )
    client = Feed(
        f"http://127.0.0.1:{port}",
        serve_dir,
        TokenAuth(SECRET),
        str(published.resumed.version),
        str(published.first.version),
        requests.Session(),
    )
    yield client
    serve.shutdown()
