"""Out-of-network retrieval in the feed (no Serve): suggested posts beside friends' posts, capped, tagged
and explained; a new public post retrievable at once; the index swapped on an alias move while feeds run.

The retriever has random weights (what is tested is the plumbing and the rules, not its quality: that is
``bench.retrieval``); its towers read columns the tiny world's store has."""

from __future__ import annotations

import asyncio
import math
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.retriever import ServableRetriever
from pipelines.features.manifest import load_manifest
from serve.feed import FeedService
from serve.index import RetrieverSlot
from serve.records import PostDraft
from serve.retrieval import RetrievalConfig, retrieve, suggested
from serve.store import EmbeddedStore
from tests.serving import test_visibility
from tests.serving.test_feed_service import constant_scores, service, viewer_with_posts

pytestmark = pytest.mark.ray


@pytest.fixture
def world(built_world: Path, tmp_path: Path) -> Path:
    shutil.copytree(built_world / "online", tmp_path / "online")
    shutil.copytree(built_world / "features", tmp_path / "features")
    return tmp_path


def random_retriever(data_dir: Path, seed: int = 0) -> ServableRetriever:
    v = load_manifest(data_dir)["columns"]["vectors"]
    return test_visibility.random_retriever(v["u_topic_share"], v["p_media"], v["p_text_emb"], seed)


def with_retriever(
    data_dir: Path, versions: dict[str, ServableRetriever], alias: list[str], **overrides: Any
) -> FeedService:
    svc = service(data_dir, constant_scores(), **overrides)
    slot = RetrieverSlot(
        "feed-retriever",
        "champion",
        7 * 86400,
        "flat",
        data_dir,
        resolve=lambda name, a: alias[0],
        load=lambda name, v: versions[v],
    )
    slot.refresh(svc.store, svc.clock.now())
    svc.retriever = slot
    return svc


def test_the_feed_mixes_friends_and_suggested_posts_within_the_share(world: Path) -> None:
    svc = with_retriever(
        world, {"1": random_retriever(world)}, ["1"], rerank={"suggested": {"max_share": 0.3}}
    )
    assert svc.retriever is not None
    assert svc.retriever.current is not None
    assert len(svc.retriever.current) > 0
    viewer = viewer_with_posts(svc.store)
    out = asyncio.run(svc.feed(viewer, 50, None))
    assert not out.fallback
    friends, _ = svc.store.friends(viewer)
    sources = [it.source for it in out.items]
    assert "suggested" in sources
    assert "friends" in sources
    last_friend = max(k for k, s in enumerate(sources) if s == "friends")
    for k, it in enumerate(out.items):
        placed = sum(s == "suggested" for s in sources[: k + 1])
        # Within the share while friends' posts last; after them, suggestions fill the feed.
        assert k > last_friend or placed <= math.ceil(0.3 * (k + 1) - 1e-9)
        if it.source == "suggested":
            assert it.author_id not in set(friends.tolist())
            assert it.why.startswith("Suggested for you")
            assert "suggested" in it.tags
            post = svc.store.posts(np.array([it.post_id]), ("visibility",))
            assert post["visibility"][0] == "public"
    assert len({it.post_id for it in out.items}) == len(out.items)


def test_without_out_of_network_the_feed_is_friends_only(world: Path) -> None:
    svc = with_retriever(world, {"1": random_retriever(world)}, ["1"], retrieval={"out_of_network": 0})
    viewer = viewer_with_posts(svc.store)
    out = asyncio.run(svc.feed(viewer, 50, None))
    assert {it.source for it in out.items} == {"friends"}


def test_the_holdout_arm_gets_friends_posts_only_and_says_so(world: Path) -> None:
    from serve.ranking import retrieval_arm_of

    svc = with_retriever(
        world,
        {"1": random_retriever(world)},
        ["1"],
        retrieval={"holdout_traffic": 0.5},
        ranking={"max_candidates": 6},
    )
    assert isinstance(svc.store, EmbeddedStore)
    seen = set()
    for viewer in svc.store.user_ids()[:60].tolist():
        friends, _ = svc.store.friends(viewer)
        if not len(friends):
            continue
        out = asyncio.run(svc.feed(viewer, 50, None))
        arm = retrieval_arm_of(viewer, 0.5)
        assert out.model.retrieval_arm == arm
        assert out.response()["model"]["retrieval_arm"] == arm
        sources = {it.source for it in out.items}
        if arm == "friends_only":
            assert sources <= {"friends"}
        seen.add((arm, "suggested" in sources))
        assert len(svc._pages[out.request_id].post_ids) <= 6  # one candidate budget for both arms
        logged = [imp.log_record() for imp in out.impressions]
        assert all(r["retrieval_arm"] == arm for r in logged)
        assert [r["suggested"] for r in logged] == [it.source == "suggested" for it in out.items]
    assert ("suggestions", True) in seen
    assert ("friends_only", False) in seen


def test_suggestions_from_elsewhere_arrive_and_a_slow_or_failing_retriever_leaves_friends_posts(
    world: Path,
) -> None:
    """The ``suggest`` path (``retrieval.placement: deployment``): what the Retriever returns is served;
    past ``retrieval.timeout_s``, or on its error, the feed is friends' posts, not a failure."""
    from serve.retrieval import Candidates, with_suggestions

    remote = with_retriever(world, {"1": random_retriever(world)}, ["1"])  # stands for the deployment
    assert remote.retriever is not None
    index = remote.retriever.current
    calls = []

    async def suggest(viewer: int, now: float, cands: Candidates, with_oon: bool) -> Candidates:
        calls.append(viewer)
        cfg = remote.cfg
        return with_suggestions(remote.store, viewer, now, cfg.retrieval, 2000, index, cands, with_oon)

    async def slow(viewer: int, now: float, cands: Candidates, with_oon: bool) -> Candidates:
        await asyncio.sleep(2)
        return await suggest(viewer, now, cands, with_oon)

    async def failing(viewer: int, now: float, cands: Candidates, with_oon: bool) -> Candidates:
        raise ConnectionError("the Retriever replica is gone")

    svc = service(world, constant_scores(), retrieval={"timeout_s": 0.2})
    viewer = viewer_with_posts(svc.store)
    svc.suggest_remote = suggest
    out = asyncio.run(svc.feed(viewer, 50, None))
    assert calls == [viewer]
    assert {it.source for it in out.items} == {"friends", "suggested"}
    for broken in (slow, failing):
        svc.suggest_remote = broken
        out = asyncio.run(svc.feed(viewer, 50, None))
        assert not out.fallback
        assert out.items
        assert {it.source for it in out.items} == {"friends"}


def test_a_new_public_post_is_retrievable_at_once(world: Path) -> None:
    svc = with_retriever(world, {"1": random_retriever(world)}, ["1"])
    svc._encode_text = lambda texts: np.zeros((len(texts), 32), np.float32)
    store = svc.store
    assert isinstance(store, EmbeddedStore)
    assert svc.retriever is not None
    slot = svc.retriever
    viewer = viewer_with_posts(store)
    friends, _ = store.friends(viewer)
    blocked = set(store.blocked_with(viewer).tolist())
    stranger = next(
        int(u)
        for u in store.user_ids()
        if u != viewer and u not in set(friends.tolist()) and u not in blocked
    )
    created = svc.create_post(
        stranger, PostDraft(text="a brand new public post about cars", topics=["cars"], visibility="public")
    )
    now = svc.clock.now() + 1
    cfg = RetrievalConfig(out_of_network=5000, oversample=1.0)
    got = suggested(store, viewer, now, cfg, slot.current, retrieve(store, viewer, now, cfg))
    assert created.post_id in set(got.post_ids.tolist())
    private = svc.create_post(stranger, PostDraft(text="only mine", visibility="private"))
    got = suggested(store, viewer, now, cfg, slot.current, retrieve(store, viewer, now, cfg))
    assert private.post_id not in set(got.post_ids.tolist())


def test_an_alias_move_swaps_the_index_with_no_failed_request(world: Path) -> None:
    versions = {"1": random_retriever(world, 1), "2": random_retriever(world, 2)}
    alias = ["1"]
    svc = with_retriever(world, versions, alias)
    viewer = viewer_with_posts(svc.store)
    assert svc.retriever is not None
    slot = svc.retriever
    first = slot.current
    assert first is not None
    assert first.version == "1"

    def move() -> None:
        alias[0] = "2"
        slot.refresh(svc.store, svc.clock.now())

    async def feeds() -> list[Any]:
        mover = threading.Thread(target=move)
        results = []
        for i in range(30):
            if i == 5:
                mover.start()
            results.append(await svc.feed(viewer, 20, None))
        mover.join()
        return results

    results = asyncio.run(feeds())
    # Retrieval errors are swallowed (friends' posts only): every feed having suggestions shows none failed.
    assert all(not r.fallback and any(it.source == "suggested" for it in r.items) for r in results)
    assert slot.current is not None
    assert slot.current.version == "2"
    assert slot.current is not first
    assert slot.refresh(svc.store, svc.clock.now()) is None  # nothing moved: nothing rebuilt


def test_the_index_ranks_by_the_whole_two_tower_score(world: Path) -> None:
    """Searching ``[u, 1]`` against ``[p / T, prior]`` is exact search by ``u · p / T + prior``, and returns
    that score; a refresh ranks by the new priors and drops posts that left the window."""
    from serve.index import PostIndex, two_tower_scores, viewer_vector
    from serve.store import EmbeddedStore as Store

    store = Store.load(world)
    now = store.as_of_s + 60
    retriever = random_retriever(world)
    index = PostIndex(retriever, "1", 7 * 86400)
    assert index.catch_up(store, now) == len(index) > 50
    viewer = int(store.user_ids()[0])
    ids = np.array(sorted(index.indexed), np.int64)
    brute = two_tower_scores(retriever, store, viewer, ids, now)
    got, scores = index.search(viewer_vector(retriever, store, viewer, now), 20)
    assert set(got.tolist()) == set(ids[np.argsort(-brute)[:20]].tolist())
    by_id = dict(zip(ids.tolist(), brute.tolist(), strict=True))
    assert np.allclose(scores, [by_id[p] for p in got.tolist()], atol=1e-3)
    later = now + 6 * 3600  # six hours on: every post's age, hence its prior, moved
    index.refresh(store, later)
    fresh = retriever.prior(two_tower_columns(store, viewer, ids, later, retriever), len(ids))
    assert np.allclose(index.entries.prior, fresh, atol=1e-4)
    brute = two_tower_scores(retriever, store, viewer, ids, later)
    got, _ = index.search(viewer_vector(retriever, store, viewer, later), 20)
    assert set(got.tolist()) == set(ids[np.argsort(-brute)[:20]].tolist())
    index.refresh(store, now + 30 * 86400)  # a month on, every post has left the window
    assert len(index) == 0
    assert index.search(viewer_vector(retriever, store, viewer, now), 5)[0].tolist() == []


def test_an_hnsw_index_returns_the_same_scores(world: Path) -> None:
    """``retrieval.index: hnsw`` holds the same ``[p / T, prior]`` rows: what it returns carries the exact
    two-tower score, and on a small corpus it finds (nearly) the exact top."""
    from serve.index import PostIndex, two_tower_scores, viewer_vector
    from serve.store import EmbeddedStore as Store

    store = Store.load(world)
    now = store.as_of_s + 60
    retriever = random_retriever(world)
    index = PostIndex(retriever, "1", 7 * 86400, kind="hnsw")
    index.catch_up(store, now)
    viewer = int(store.user_ids()[0])
    ids = np.array(sorted(index.indexed), np.int64)
    scored = two_tower_scores(retriever, store, viewer, ids, now)
    brute = dict(zip(ids.tolist(), scored.tolist(), strict=True))
    got, scores = index.search(viewer_vector(retriever, store, viewer, now), 20)
    assert np.allclose(scores, [brute[p] for p in got.tolist()], atol=1e-3)
    exact = set(sorted(brute, key=brute.__getitem__, reverse=True)[:20])
    assert len(exact & set(got.tolist())) >= 18


def two_tower_columns(store: Any, viewer: int, ids: np.ndarray, now: float, retriever: Any) -> dict[str, Any]:
    from serve.index import tower_columns

    cols = tower_columns(store, viewer, ids, now)
    return {c: cols[c] for c in retriever.prior_columns}


def test_preranking_keeps_the_suggestions_and_the_best_friends_posts(world: Path) -> None:
    from serve.index import PostIndex, prerank, two_tower_scores
    from serve.retrieval import merge
    from serve.store import EmbeddedStore as Store

    store = Store.load(world)
    now = store.as_of_s + 60
    retriever = random_retriever(world)
    index = PostIndex(retriever, "1", 7 * 86400)
    index.catch_up(store, now)
    viewer = viewer_with_posts(store, minimum=6)
    cfg = RetrievalConfig(out_of_network=3)
    friends = retrieve(store, viewer, now, cfg)
    both = merge(friends, suggested(store, viewer, now, cfg, index, friends))
    n_oon = int(both.suggested.sum())
    assert n_oon == 3
    out = prerank(store, viewer, now, index, both, n_oon + 2)
    assert len(out.post_ids) == n_oon + 2
    assert int(out.suggested.sum()) == n_oon
    kept = out.post_ids[~out.suggested]
    scores = two_tower_scores(retriever, store, viewer, friends.post_ids, now)
    assert set(kept.tolist()) == set(friends.post_ids[np.argsort(-scores)[:2]].tolist())
    order = {p: i for i, p in enumerate(both.post_ids.tolist())}
    assert [order[p] for p in out.post_ids.tolist()] == sorted(order[p] for p in out.post_ids.tolist())
    assert out.dropped["preranked_out"] == len(both.post_ids) - n_oon - 2
    # A budget the suggestions alone would fill: they get at most their share, friends' posts the rest.
    tight = prerank(store, viewer, now, index, both, 4, suggested_share=0.5)
    assert int(tight.suggested.sum()) == 2
    assert int((~tight.suggested).sum()) == 2
    only = prerank(store, viewer, now, index, both.take(np.flatnonzero(both.suggested)), 2)
    assert len(only.post_ids) == 2  # no friends' posts to take the room: suggestions fill it
