"""``retrieval.placement: deployment``: the feed as ingress → Retriever → Ranker on Ray Serve, with a
registered retriever (random weights: the plumbing is tested here, its quality in ``bench.retrieval``).

Deployed beside the session's ``feed`` app (same Serve instance) as the app ``mixed`` at ``/mixed``."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from serve.store import EmbeddedStore
from tests.serving.conftest import SECRET, Feed, users_with_feeds
from tests.serving.test_suggested import random_retriever

pytestmark = pytest.mark.ray


def register_retriever(data_dir: Path) -> str:
    """A random retriever registered as ``feed-retriever@champion`` in ``data_dir``'s MLflow store."""
    import mlflow
    from mlflow import MlflowClient

    from pipelines.common import tracking
    from serve.index import tower_columns

    retriever = random_retriever(data_dir)
    store = EmbeddedStore.load(data_dir)
    viewer, posts = store.sample(4)
    cols = tower_columns(store, viewer, posts, store.as_of_s)
    with tracking.pointed_at(tracking.embedded_uri(data_dir)):
        with mlflow.start_run(experiment_id=tracking.experiment_id("retriever-test", data_dir)):
            version = str(tracking.log_retriever(retriever, cols, "feed-retriever").version)
        MlflowClient().set_registered_model_alias("feed-retriever", tracking.CHAMPION, version)
    return version


@pytest.fixture(scope="module")
def mixed(feed: Feed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Feed]:
    from ray import serve

    from serve.app import compose

    d = tmp_path_factory.mktemp("mixed")
    for sub in ("features", "online"):
        shutil.copytree(feed.data_dir / sub, d / sub)
    shutil.copy(feed.data_dir / "mlflow.db", d / "mlflow.db")
    register_retriever(d)
    small = [
        {"name": n, "ray_actor_options": {"num_cpus": 0.1}} for n in ("FeedIngress", "Ranker", "Retriever")
    ]
    args = {
        "data_dir": str(d),
        "auth": {"secret": SECRET},
        "store": {"poll_s": 0.2},
        "retrieval": {"placement": "deployment", "timeout_s": 10.0, "out_of_network": 50},
        "ranking": {"placement": "deployment", "timeout_s": 10.0},
    }
    serve.run(compose(args, small), name="mixed", route_prefix="/mixed")
    yield Feed(feed.base, d, feed.auth, feed.champion, feed.challenger, feed.session)
    serve.delete("mixed")


def test_the_feed_gets_suggestions_from_the_retriever_deployment(mixed: Feed) -> None:
    health = requests.get(f"{mixed.base}/mixed/healthz", timeout=30).json()
    assert health["placement"] == "deployment"
    assert health["retriever"]["version"] == "1"
    assert health["retriever"]["posts"] > 0
    store = EmbeddedStore.load(mixed.data_dir)
    sources: set[str] = set()
    for u in users_with_feeds(store, 6):
        r = mixed.get(u, prefix="/mixed", limit=50)
        assert r.status_code == 200, r.text
        body = r.json()
        assert not body["fallback"]
        assert body["model"]["retrieval_arm"] == "suggestions"
        friends = set(store.friends(u)[0].tolist())
        for it in body["items"]:
            sources.add(it["source"])
            if it["source"] == "suggested":
                assert it["author_id"] not in friends
                assert it["why"].startswith("Suggested for you")
    assert sources == {"friends", "suggested"}
