"""Moving the ``champion`` alias while clients are reading: serving switches versions within
``model.poll_s`` and not one request fails or falls back."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import requests

from pipelines.common.tracking import CHAMPION
from serve.store import EmbeddedStore
from tests.serving.conftest import Feed, set_alias, users_with_feeds

pytestmark = pytest.mark.ray


def test_promotion_under_load_switches_version_with_zero_failed_requests(
    feed: Feed, store: EmbeddedStore, serve_dir: Path
) -> None:
    users = users_with_feeds(store, 4, arm=CHAMPION)
    results: list[tuple[float, int, str | None, bool]] = []
    stop = threading.Event()

    def client(user: int) -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                r = session.get(f"{feed.base}/feed/{user}", headers=feed.headers(user), timeout=30)
                body = r.json() if r.status_code == 200 else {}
                version = body.get("model", {}).get("version")
                results.append((time.time(), r.status_code, version, bool(body.get("fallback"))))
            except requests.RequestException:
                results.append((time.time(), 0, None, False))

    threads = [threading.Thread(target=client, args=(u,)) for u in users]
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)
        promoted_at = time.time()
        set_alias(serve_dir, "champion", feed.challenger)  # the other registered version
        deadline = promoted_at + 20
        while time.time() < deadline and not any(
            v == feed.challenger and t > promoted_at for t, _, v, _ in results
        ):
            time.sleep(0.1)
        time.sleep(1.0)
        # On a loaded machine fewer feeds complete per second: keep the load on until enough have (and the
        # new version has served a few), rather than judging the switch on a handful of requests.
        while time.time() < deadline and (
            len(results) <= 20 or any(v != feed.challenger for _, _, v, _ in results[-len(users) * 2 :])
        ):
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join()
        set_alias(serve_dir, "champion", feed.champion)
    statuses = [s for _, s, _, _ in results]
    assert len(results) > 20
    assert set(statuses) == {200}, f"failed requests during the switch: {sorted(set(statuses))}"
    assert not any(fb for *_, fb in results), "a feed fell back during the switch"
    versions = [v for _, _, v, _ in results]
    assert feed.champion in versions
    assert feed.challenger in versions
    switched = next(t for t, _, v, _ in results if v == feed.challenger)
    assert switched - promoted_at < 10  # model.poll_s is 0.5 s in the test app
    tail = versions[-len(users) * 2 :]
    assert set(tail) == {feed.challenger}
    # And back: the restored alias is served again.
    deadline = time.time() + 20
    while time.time() < deadline:
        if feed.get(users[0]).json()["model"]["version"] == feed.champion:
            break
        time.sleep(0.2)
    assert feed.get(users[0]).json()["model"]["version"] == feed.champion
