"""Overload sheds, it does not queue: past a replica's ``max_ongoing_requests`` + ``max_queued_requests``
the feed answers 503 with ``Retry-After`` at once (``backpressure_config`` in ``configs/serve.yaml``), and a
shed request stores nothing, so a client's retry of a shed write is accepted, not a duplicate."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from pipelines.simulate.users import shed_retry
from serve.store import EmbeddedStore
from tests.serving.conftest import Feed, users_with_feeds

pytestmark = pytest.mark.ray

PREFIX = "/shed"


@pytest.fixture(scope="module")
def shedding(feed: Feed) -> Iterator[Feed]:
    """The feed with room for one request at a time and one waiting, on one replica."""
    from ray import serve

    from serve.app import compose

    ingress = {
        "name": "FeedIngress",
        "num_replicas": 1,
        "max_ongoing_requests": 1,
        "max_queued_requests": 1,
        "backpressure_config": {"status_code": 503, "retry_after_s": 2},
        "ray_actor_options": {"num_cpus": 0.1},
    }
    args = {
        "data_dir": str(feed.data_dir),
        "auth": {"secret": feed.auth.secret},
        "store": {"poll_s": 0.2},
        "ranking": {"placement": "ingress", "timeout_s": 10.0},
    }
    serve.run(compose(args, [ingress]), name="shed", route_prefix=PREFIX)
    deadline = time.time() + 60  # HAProxy learns the new route by a reload
    while time.time() < deadline:
        if requests.get(f"{feed.base}{PREFIX}/healthz", timeout=30).status_code == 200:
            break
        time.sleep(0.5)
    time.sleep(3)
    yield feed
    serve.delete("shed")


def _burst(calls: list[Any]) -> list[requests.Response]:
    """Every call at once (threads released together)."""
    out: list[Any] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i: int) -> None:
        start.wait()
        out[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return out


def _not_this_app(r: requests.Response) -> bool:
    """HAProxy's backup (Serve's proxy) may send a prefixed path to the app at "/" for a while after other
    tests killed replicas (test_retriever_deployment): FastAPI's bare 404."""
    return r.status_code == 404 and r.text == '{"detail":"Not Found"}'


def _retry(call: Any) -> requests.Response:
    """``call()`` as a client of the feed would: after Retry-After while shed, and past a stray 404."""
    deadline = time.time() + 30
    r = shed_retry(call)
    while _not_this_app(r) and time.time() < deadline:
        time.sleep(1)
        r = shed_retry(call)
    return r


def test_past_its_slots_the_feed_answers_503_with_retry_after_at_once(
    shedding: Feed, store: EmbeddedStore
) -> None:
    users = users_with_feeds(store, 4)

    def get(u: int) -> Any:
        return lambda: requests.get(
            f"{shedding.base}{PREFIX}/feed/{u}", params={"limit": 20}, headers=shedding.headers(u), timeout=60
        )

    answers = [r for r in _burst([get(users[i % len(users)]) for i in range(16)]) if not _not_this_app(r)]
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 503}, codes  # shed or served, never an error
    assert codes.count(200) >= 1, codes
    assert codes.count(503) >= 1, codes
    for r in answers:
        if r.status_code == 503:
            assert r.headers["Retry-After"] == "2"
            assert r.elapsed.total_seconds() < 5  # at once, not after a queue
    r = _retry(get(users[0]))  # a client that honours Retry-After gets its feed
    assert r.status_code == 200, r.text


def test_a_shed_write_stores_nothing_and_its_retry_is_accepted(shedding: Feed, store: EmbeddedStore) -> None:
    users = users_with_feeds(store, 4)
    items = {}
    for u in users:
        r = _retry(
            lambda u=u: requests.get(
                f"{shedding.base}{PREFIX}/feed/{u}",
                params={"limit": 4},
                headers=shedding.headers(u),
                timeout=60,
            )
        )
        assert r.status_code == 200, r.text
        items[u] = r.json()["items"][0]
    stamp = time.time_ns()
    bodies = {
        (u, k): {
            "events": [
                {
                    "type": "view",
                    "post_id": items[u]["post_id"],
                    "impression_id": items[u]["impression_id"],
                    "dwell_ms": 1000 + k,
                    "event_id": f"shed-{stamp}-{u}-{k}",
                }
            ]
        }
        for u in users
        for k in range(4)
    }

    def post(key: tuple[int, int]) -> Any:
        u, _ = key
        return lambda: requests.post(
            f"{shedding.base}{PREFIX}/events", json=bodies[key], headers=shedding.headers(u), timeout=60
        )

    keys = list(bodies)
    first = _burst([post(k) for k in keys])
    assert {r.status_code for r in first} <= {202, 503, 404}, [r.text for r in first]
    shed = [k for k, r in zip(keys, first, strict=True) if r.status_code != 202]
    assert any(r.status_code == 503 for r in first)
    for k in shed:  # retried one at a time: stored now, once
        r = _retry(post(k))
        assert r.status_code == 202, r.text
        assert r.json() == {
            "accepted": 1,
            "event_ids": [bodies[k]["events"][0]["event_id"]],
            "duplicates": [],
        }
