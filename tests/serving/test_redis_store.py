"""The Redis backend against a real redis-server: it answers every read exactly as the embedded store does
(before and after live writes), serving rows and retrieval are identical on both, and a write through one
node is visible to another at once."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from models.batch import Jagged
from serve.config import parse
from serve.features import assemble
from serve.feed import Clock, FeedService
from serve.log import ServingLog
from serve.metrics import FeedMetrics
from serve.records import ClientEvent, ScoreRequest, Scores
from serve.redis_store import RedisStore
from serve.retrieval import RetrievalConfig, retrieve
from serve.store import EmbeddedStore

pytestmark = pytest.mark.ray


@pytest.fixture
def both(built_world: Path, tmp_path: Path, redis_url: str, request: pytest.FixtureRequest) -> tuple:
    for sub in ("online", "features"):
        shutil.copytree(built_world / sub, tmp_path / sub)
    prefix = f"t-{request.node.name}"[:60]
    return EmbeddedStore.load(tmp_path), RedisStore.connect(redis_url, tmp_path, prefix), tmp_path, prefix


def _same(a: dict[str, Any], b: dict[str, Any], keys: list[str] | None = None) -> None:
    for k in keys or sorted(a):
        if k not in b:
            continue
        if isinstance(a[k], Jagged):
            assert a[k].rows() == b[k].rows(), k
            continue
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if x.dtype == object:
            norm = lambda v: [list(e) if isinstance(e, np.ndarray) else e for e in v.tolist()]  # noqa: E731
            assert norm(x) == norm(y), k
        else:
            np.testing.assert_allclose(x.astype(np.float64), y.astype(np.float64), rtol=1e-6, err_msg=k)


def _compare(emb: EmbeddedStore, red: RedisStore) -> None:
    users = emb.user_ids()
    probe = np.concatenate([users[:40], np.array([-5, 10**12])])
    _same(emb.users(probe), red.users(probe))
    now = emb.as_of_s + 60
    for u in users[:40].tolist():
        assert emb.has_user(u)
        assert red.has_user(u)
        f1, s1 = emb.friends(u)
        f2, s2 = red.friends(u)
        assert f1.tolist() == f2.tolist()
        np.testing.assert_allclose(s1, s2)
        assert sorted(emb.blocked_with(u).tolist()) == sorted(red.blocked_with(u).tolist())
        by1 = emb.posts_by(f1, now - 7 * 86400, now)
        by2 = red.posts_by(f2, now - 7 * 86400, now)
        assert sorted(by1.tolist()) == sorted(by2.tolist())
        _same(emb.posts(by1), red.posts(by1))
        authors = emb.posts(by1)["author_id"]
        _same(emb.pairs(u, authors), red.pairs(u, authors))
        e1, e2 = emb.engagers(by1), red.engagers(by1)
        assert sorted(zip(*(x.tolist() for x in e1), strict=True)) == sorted(
            zip(*(x.tolist() for x in e2), strict=True)
        )
        v1, v2 = emb.viewer(u), red.viewer(u)
        assert sorted(v1.seen.tolist()) == sorted(v2.seen.tolist())
        assert sorted(v1.hidden.tolist()) == sorted(v2.hidden.tolist())
        assert v1.hidden_authors == v2.hidden_authors
        c1 = retrieve(emb, u, now, RetrievalConfig())
        c2 = retrieve(red, u, now, RetrievalConfig())
        assert sorted(c1.post_ids.tolist()) == sorted(c2.post_ids.tolist())
        if len(c1.post_ids):
            _same(assemble(emb, u, c1.post_ids, now), assemble(red, u, c1.post_ids, now))
    assert not red.has_user(10**12)


def _records(emb: EmbeddedStore) -> list[dict[str, Any]]:
    """A new post, an impression, a like, a hide and a report, as the feed writes them."""
    viewer = int(emb.user_ids()[3])
    friends, _ = emb.friends(viewer)
    author = int(friends[0])
    old = int(emb.posts_by(friends, 0, 1e12)[0])
    t = int((emb.as_of_s + 30) * 1000)
    new = {
        "kind": "post",
        "id": "post:999000111",
        "post_id": 999000111,
        "author_id": author,
        "created_at_ms": t,
        "modality": "image",
        "text": "Sunset over the harbour",
        "topics": ["travel"],
        "visibility": "friends",
        "deleted_at": None,
        "media_duration_s": None,
        "media_vector": [0.5, 0.25],
        "text_emb": [0.1] * emb.posts(np.array([old]))["p_text_emb"].shape[1],
    }
    eng = {"kind": "engagement", "viewer_id": viewer, "impression_id": None, "dwell_ms": None, "at_ms": t + 5}
    return [
        new,
        {
            "kind": "impression",
            "id": "i-1",
            "impression_id": "i-1",
            "request_id": "r",
            "viewer_id": viewer,
            "post_id": old,
            "served_at_ms": t,
            "position": 0,
        },
        {**eng, "id": "e-1", "event_id": "e-1", "post_id": old, "type": "like"},
        {**eng, "id": "e-2", "event_id": "e-2", "post_id": 999000111, "type": "like"},
        {**eng, "id": "e-3", "event_id": "e-3", "post_id": old, "type": "hide"},
        {**eng, "id": "e-4", "event_id": "e-4", "post_id": 999000111, "type": "report"},
    ]


def test_redis_reads_equal_the_embedded_store(both: tuple) -> None:
    emb, red, _, _ = both
    _compare(emb, red)


def test_redis_applies_live_writes_once_like_the_embedded_store(both: tuple) -> None:
    emb, red, _, _ = both
    records = _records(emb)
    liked = np.array([records[2]["post_id"]])
    before = emb.posts(liked, ["p_like_1h", "p_like_all"])
    assert emb.apply(records) == len(records)
    assert red.apply(records) == len(records)
    assert red.apply(records) == 0  # replayed: nothing changes
    _compare(emb, red)
    after = red.posts(liked, ["p_like_1h", "p_like_all"])
    for counter in ("p_like_1h", "p_like_all"):  # every window and all time count the live like once
        np.testing.assert_allclose(after[counter], before[counter] + 1)
    viewer = records[1]["viewer_id"]
    assert records[4]["post_id"] in red.viewer(viewer).hidden.tolist()
    assert 999000111 in red.posts_by(np.array([records[0]["author_id"]]), 0, 1e12).tolist()


def test_a_second_node_connects_to_the_loaded_snapshot_and_sees_writes_at_once(
    both: tuple, redis_url: str
) -> None:
    emb, red, data_dir, prefix = both
    keys_before = redis.Redis.from_url(redis_url).dbsize()
    other = RedisStore.connect(redis_url, data_dir, prefix)  # already current: no reload
    assert redis.Redis.from_url(redis_url).dbsize() == keys_before
    records = _records(emb)
    red.apply(records)
    viewer = records[1]["viewer_id"]
    assert records[4]["post_id"] in other.viewer(viewer).hidden.tolist()
    np.testing.assert_allclose(
        other.posts(np.array([records[2]["post_id"]]))["p_like_1h"],
        red.posts(np.array([records[2]["post_id"]]))["p_like_1h"],
    )


def test_the_feed_pipeline_runs_on_redis_and_shares_writes_between_nodes(both: tuple, redis_url: str) -> None:
    emb, _, data_dir, prefix = both

    async def score(req: ScoreRequest) -> Scores:
        n = len(req.post_ids)
        probs = {
            t: np.full(n, 0.1, np.float32) for t in ("click", "like", "comment", "share", "hide", "skip")
        }
        probs["dwell"] = np.full(n, 1000.0, np.float32)
        return Scores(probs=probs, signals={}, arm=req.arm, version="1")

    cfg = parse(
        {
            "data_dir": str(data_dir),
            "auth": {"secret": "redis-tests-secret-0123456789abcdefgh"},
            "store": {"backend": "redis", "redis_url": redis_url, "redis_prefix": prefix},
        }
    )
    nodes = [
        FeedService(
            cfg,
            RedisStore.connect(redis_url, data_dir, prefix),
            ServingLog(data_dir, f"node{i}"),
            score,
            Clock("snapshot", emb.as_of_s, None),
            FeedMetrics(enabled=False),
        )
        for i in range(2)
    ]
    viewer = next(
        int(u)
        for u in emb.user_ids()
        if len(retrieve(emb, int(u), emb.as_of_s + 60, RetrievalConfig()).post_ids) > 2
    )
    first = asyncio.run(nodes[0].feed(viewer, 50, None))
    target = first.items[0].post_id
    nodes[0].events(viewer, [ClientEvent(type="hide", post_id=target)])
    again = asyncio.run(nodes[1].feed(viewer, 50, None))  # the other node, no log tailing
    assert target not in [it.post_id for it in again.items]
