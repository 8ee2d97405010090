"""Visibility is absolute: :func:`serve.retrieval.retrieve` over random small worlds and hand-made ones.

A world is plain Python lists (users, friendships, blocks, posts, viewer events, live log records);
:func:`_world_tables` turns them into the online tables ``EmbeddedStore.from_tables`` reads (as
``pipelines.features.online.build_online`` writes them). The oracle (:func:`_allowed`,
:func:`_expected`) restates the rules from those raw lists; it does not use ``serve.retrieval.visible``.

No Ray: the embedded store is built in this process.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.common import schema
from pipelines.features.pit import TOPIC_PROFILES
from serve.features import AUTHOR_SCALARS, VIEWER_SCALARS
from serve.retrieval import RetrievalConfig, retrieve
from serve.store import ONLINE_TABLES, EmbeddedStore

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
NOW_MS = 1_700_000_000_000  # whole seconds, so ms ↔ s conversions are exact
NOW_S = NOW_MS / 1000
WINDOWS = {"1d": 86400}
VOCAB: dict[str, dict[str, int]] = {
    "topic": {"a": 1},
    "modality": {"image": 1, "text": 2, "video": 3},
    "city": {},
    "gender": {},
}
TEXT_DIM, MEDIA_DIM, TOPIC_SHARE_DIM, MODALITY_SHARE_DIM = 4, 2, 4, 3
USER_SCALARS = (*VIEWER_SCALARS, "u_tenure_days", *AUTHOR_SCALARS)
POST_COUNTERS = tuple(
    f"p_{c}_{w}"
    for w in ("1d", "all")
    for c in ("impressions", "click", "like", "comment", "share", "hide", "report")
)
PAIR_COLUMNS = (
    "ua_impressions",
    "ua_actions",
    "ua_action_rate",
    "ua_last_action_h",
    "ua_has_interacted",
    "rel_friend",
    "rel_friend_days",
    "rel_same_city",
    "rel_classmates",
    "rel_colleagues",
)
VISIBILITIES = ("public", "friends", "private")
NEGATIVE = ("hide", "report")


@dataclass(frozen=True)
class Post:
    post_id: int
    author_id: int
    created_ms: int
    visibility: str = "public"
    deleted_ms: int | None = None


@dataclass
class World:
    users: list[int]
    friendships: list[tuple[int, int, int]] = field(default_factory=list)  # (user_a, user_b, since ms)
    blocks: list[tuple[int, int]] = field(default_factory=list)  # (blocker, blocked)
    posts: list[Post] = field(default_factory=list)
    events: list[tuple[int, int, str]] = field(default_factory=list)  # viewer_events: (viewer, post, type)
    live_posts: list[Post] = field(default_factory=list)  # applied with store.apply
    live_events: list[tuple[int, int, str]] = field(default_factory=list)  # applied with store.apply


# ------------------------------------------------------------------------------------------- tables
def _ts(ms: Iterable[int | None]) -> pa.Array:
    return pa.array(list(ms), schema.TS)


def _zeros(n: int) -> pa.Array:
    return pa.array(np.zeros(n, np.float32))


def _fixed(n: int, width: int) -> pa.Array:
    values = pa.array(np.arange(n * width, dtype=np.float32) / max(n * width, 1))
    return pa.FixedSizeListArray.from_arrays(values, width)


def _world_tables(
    users: list[int],
    friendships: list[tuple[int, int, int]],
    blocks: list[tuple[int, int]],
    posts: list[Post],
    events: list[tuple[int, int, str]],
) -> dict[str, pa.Table]:
    """The online tables (``ONLINE_TABLES``) of a world given as plain lists; features are filler."""
    n_u, n_p = len(users), len(posts)
    user_table = pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "age": pa.array([None if i % 3 == 0 else 18 + i for i in range(n_u)], pa.int16()),
            "gender": pa.array([None if i % 2 else "f" for i in range(n_u)], pa.string()),
            "city": pa.array([None] * n_u, pa.string()),
            "school": pa.array([None if i % 2 else f"school{i % 3}" for i in range(n_u)], pa.string()),
            "work": pa.array([None] * n_u, pa.string()),
            "joined_at": _ts([NOW_MS - 400 * DAY_MS] * n_u),
            **{name: _zeros(n_u) for name in USER_SCALARS},
            **{name: _fixed(n_u, TOPIC_SHARE_DIM) for name in TOPIC_PROFILES},
            "u_modality_share": _fixed(n_u, MODALITY_SHARE_DIM),
            "city_code": pa.array([0] * n_u, pa.int64()),
            "gender_code": pa.array([0] * n_u, pa.int64()),
            "school_code": pa.array([0] * n_u, pa.int64()),
            "work_code": pa.array([0] * n_u, pa.int64()),
        }
    )
    post_table = pa.table(
        {
            "post_id": pa.array([p.post_id for p in posts], pa.int64()),
            "author_id": pa.array([p.author_id for p in posts], pa.int64()),
            "created_at": _ts(p.created_ms for p in posts),
            "modality": pa.array(["text"] * n_p, pa.string()),
            "text": pa.array([f"post {p.post_id}" for p in posts], pa.string()),
            "topics": pa.array([["a"]] * n_p, pa.list_(pa.string())),
            "visibility": pa.array([p.visibility for p in posts], pa.string()),
            "deleted_at": _ts(p.deleted_ms for p in posts),
            "media_duration_s": pa.array([None] * n_p, pa.float32()),
            "media_vector": pa.array([None] * n_p, pa.list_(pa.float32())),
            **{name: _zeros(n_p) for name in POST_COUNTERS},
            "modality_code": pa.array([VOCAB["modality"]["text"]] * n_p, pa.int64()),
            "topic_codes": pa.array([[1]] * n_p, pa.list_(pa.int64())),
            "p_text_emb": _fixed(n_p, TEXT_DIM),
            "p_media": _fixed(n_p, MEDIA_DIM),
        }
    )
    pair_table = pa.table(
        {
            "viewer_id": pa.array([], pa.int64()),
            "author_id": pa.array([], pa.int64()),
            **{name: pa.array([], pa.float32()) for name in PAIR_COLUMNS},
        }
    )
    friend_table = pa.table(
        {
            "user_a": pa.array([a for a, _, _ in friendships], pa.int64()),
            "user_b": pa.array([b for _, b, _ in friendships], pa.int64()),
            "created_at": _ts(t for _, _, t in friendships),
        }
    )
    block_table = pa.table(
        {
            "blocker_id": pa.array([a for a, _ in blocks], pa.int64()),
            "blocked_id": pa.array([b for _, b in blocks], pa.int64()),
            "created_at": _ts([NOW_MS - DAY_MS] * len(blocks)),
        }
    )
    recent_table = pa.table(
        {"post_id": pa.array([], pa.int64()), "user_id": pa.array([], pa.int64()), "at": _ts([])}
    )
    event_table = pa.table(
        {
            "viewer_id": pa.array([v for v, _, _ in events], pa.int64()),
            "post_id": pa.array([p for _, p, _ in events], pa.int64()),
            "type": pa.array([t for _, _, t in events], pa.string()),
            "at": _ts([NOW_MS - HOUR_MS] * len(events)),
        }
    )
    tables = {
        "users": user_table,
        "posts": post_table,
        "user_author": pair_table,
        "friendships": friend_table,
        "blocks": block_table,
        "recent_actions": recent_table,
        "viewer_events": event_table,
    }
    assert tuple(tables) == ONLINE_TABLES
    return tables


def _live_records(w: World) -> list[dict[str, Any]]:
    """Log records (as serve.feed writes them) for the world's live posts and events."""
    records: list[dict[str, Any]] = [
        {
            "kind": "post",
            "id": f"post:{p.post_id}",
            "post_id": p.post_id,
            "author_id": p.author_id,
            "created_at_ms": p.created_ms,
            "modality": "text",
            "text": f"live post {p.post_id}",
            "topics": ["a"],
            "visibility": p.visibility,
            "deleted_at": None,
            "media_duration_s": None,
            "media_vector": None,
            "text_emb": [0.5] * TEXT_DIM,
        }
        for p in w.live_posts
    ]
    for i, (viewer, post, kind) in enumerate(w.live_events):
        if kind == "impression":
            records.append(
                {
                    "kind": "impression",
                    "id": f"imp:{i}",
                    "impression_id": f"imp:{i}",
                    "request_id": "req",
                    "viewer_id": viewer,
                    "post_id": post,
                    "served_at_ms": NOW_MS - 60_000,
                    "position": 0,
                }
            )
        else:
            records.append(
                {
                    "kind": "engagement",
                    "id": f"ev:{i}",
                    "event_id": f"ev:{i}",
                    "viewer_id": viewer,
                    "post_id": post,
                    "impression_id": None,
                    "type": kind,
                    "at_ms": NOW_MS - 60_000,
                    "dwell_ms": None,
                }
            )
    return records


def _snapshot_store(w: World) -> EmbeddedStore:
    tables = _world_tables(w.users, w.friendships, w.blocks, w.posts, w.events)
    return EmbeddedStore.from_tables(tables, NOW_S, WINDOWS, VOCAB)


def _store(w: World) -> EmbeddedStore:
    """The snapshot with the world's live records applied."""
    store = _snapshot_store(w)
    store.apply(_live_records(w))
    return store


# ------------------------------------------------------------------------------------------- oracle
def _friends(w: World, viewer: int, now_ms: int = NOW_MS) -> set[int]:
    """Users with a friendship to ``viewer`` that started strictly before ``now``."""
    out = set()
    for a, b, since in w.friendships:
        if since < now_ms and viewer in (a, b):
            out.add(b if a == viewer else a)
    return out


def _hidden(w: World, viewer: int, live: bool) -> set[int]:
    events = w.events + (w.live_events if live else [])
    return {p for v, p, kind in events if v == viewer and kind in NEGATIVE}


def _all_posts(w: World, live: bool) -> list[Post]:
    return w.posts + (w.live_posts if live else [])


@dataclass(frozen=True)
class Viewer:
    """What the rules need to know about one viewer, read from the raw lists."""

    id: int
    friends: set[int]
    blocked: set[int]  # blocked by the viewer or blocking them
    hidden: set[int]  # post ids the viewer hid or reported

    @classmethod
    def of(cls, w: World, viewer: int, live: bool, now_ms: int = NOW_MS) -> Viewer:
        blocked = {b for a, b in w.blocks if a == viewer} | {a for a, b in w.blocks if b == viewer}
        return cls(viewer, _friends(w, viewer, now_ms), blocked, _hidden(w, viewer, live))


def _allowed(v: Viewer, post: Post, now_ms: int = NOW_MS) -> bool:
    """May viewer ``v`` ever be shown ``post``? The rules, written out plainly."""
    author = post.author_id
    if post.deleted_ms is not None:  # any deletion time, even a later one
        return False
    if post.created_ms >= now_ms:  # does not exist yet
        return False
    if author in v.blocked:
        return False
    if post.post_id in v.hidden:
        return False
    if author == v.id:
        return True
    if post.visibility == "private":
        return False
    if post.visibility == "friends":
        return author in v.friends
    return post.visibility == "public"


def _feed_authors(v: Viewer, cfg: RetrievalConfig) -> set[int]:
    """Whose posts a feed shows: friends (friendship started before now), and the viewer's own if asked."""
    return v.friends | ({v.id} if cfg.include_own_posts else set())


def _window_start_ms(cfg: RetrievalConfig, now_ms: int = NOW_MS) -> float:
    return now_ms - cfg.window_days * DAY_MS


def _expected(w: World, v: Viewer, cfg: RetrievalConfig, live: bool) -> list[Post]:
    """Every post the viewer should get, newest first, before the cap."""
    authors = _feed_authors(v, cfg)
    start = _window_start_ms(cfg)
    out = [
        p for p in _all_posts(w, live) if p.author_id in authors and p.created_ms >= start and _allowed(v, p)
    ]
    return sorted(out, key=lambda p: -p.created_ms)


def _check(store: EmbeddedStore, w: World, viewer: int, cfg: RetrievalConfig, live: bool) -> None:
    got = retrieve(store, viewer, NOW_S, cfg)
    ids = got.post_ids.tolist()
    by_id = {p.post_id: p for p in _all_posts(w, live)}
    v = Viewer.of(w, viewer, live)
    authors = _feed_authors(v, cfg)
    where = f"viewer {viewer}, {cfg}, live={live}"
    assert len(set(ids)) == len(ids), f"duplicates: {ids} ({where})"
    for pid in ids:
        assert pid in by_id, f"unknown post {pid} ({where})"
        p = by_id[pid]
        assert _allowed(v, p), f"LEAK: {p} ({where})"
        assert p.author_id in authors, f"not a friend's post: {p} ({where})"
        assert _window_start_ms(cfg) <= p.created_ms < NOW_MS, f"outside the window: {p} ({where})"
    # Complete and newest first: the created times are exactly the expected top K (ties may go either way).
    expected = _expected(w, v, cfg, live)
    assert [by_id[pid].created_ms for pid in ids] == [p.created_ms for p in expected][: cfg.max_candidates], (
        f"got {ids}, expected {[p.post_id for p in expected][: cfg.max_candidates]} ({where})"
    )
    assert len(ids) == min(len(expected), cfg.max_candidates)
    events = w.events + (w.live_events if live else [])
    seen = {p for v, p, kind in events if v == viewer and kind == "impression"}
    assert got.seen.tolist() == [pid in seen for pid in ids], where
    assert got.considered - sum(got.dropped.values()) == len(ids), where


# --------------------------------------------------------------------------------------- properties
CREATED_OFFSET = st.one_of(
    st.integers(-10 * DAY_MS, DAY_MS),
    st.integers(-240, 24).map(lambda h: h * HOUR_MS),  # a coarse grid: ties in created time
    st.sampled_from(
        [
            0,
            -1,
            1,
            -DAY_MS,
            -DAY_MS - 1,
            -int(2.5 * DAY_MS),
            -int(2.5 * DAY_MS) - 1,
            -7 * DAY_MS,
            -7 * DAY_MS - 1,
        ]
    ),  # the edges: now and the window starts
)
SINCE_OFFSET = st.one_of(st.integers(-20 * DAY_MS, 2 * DAY_MS), st.sampled_from([-1, 0, 1]))


def _sized_list(draw: st.DrawFn, elements: st.SearchStrategy[Any], max_size: int) -> list[Any]:
    """A list whose length is drawn first (plain ``st.lists`` stays short: too few friendships and blocks)."""
    size = draw(st.integers(0, max_size))
    return draw(st.lists(elements, min_size=size, max_size=size))


@st.composite
def worlds(draw: st.DrawFn) -> World:
    n = draw(st.integers(2, 25))
    users = draw(st.permutations([100 + 7 * i for i in range(n)]))  # ids are not codes; table unsorted
    pair = st.tuples(st.integers(0, n - 1), st.integers(1, n - 1)).map(
        lambda t: (users[t[0]], users[(t[0] + t[1]) % n])
    )
    friendships = [
        (a, b, NOW_MS + off) for (a, b), off in _sized_list(draw, st.tuples(pair, SINCE_OFFSET), 3 * n)
    ]
    # Blocks: random pairs, and friendships blocked in either direction (where a block matters).
    friend_pairs = [(a, b) for a, b, _ in friendships] + [(b, a) for a, b, _ in friendships]
    block = st.one_of(pair, st.sampled_from(friend_pairs)) if friend_pairs else pair
    blocks = _sized_list(draw, block, max(1, n // 2))

    def post(post_id: int, live: bool) -> st.SearchStrategy[Post]:
        return st.builds(
            Post,
            post_id=st.just(post_id),
            author_id=st.sampled_from(users),
            created_ms=CREATED_OFFSET.map(lambda off: NOW_MS + off),
            visibility=st.sampled_from(VISIBILITIES),
            deleted_ms=st.none()
            if live
            else st.one_of(st.none(), st.none(), st.integers(-10 * DAY_MS, 2 * DAY_MS).map(NOW_MS.__add__)),
        )

    n_posts = draw(st.integers(0, 80))
    order = draw(st.permutations(range(n_posts)))
    posts = [draw(post(5_000_000 + 13 * k, live=False)) for k in order]
    n_live = draw(st.integers(0, 8))
    live_posts = [draw(post(9_000_000 + k, live=True)) for k in range(n_live)]

    def events(among: list[Post], max_size: int) -> list[tuple[int, int, str]]:
        """Viewer events: by anyone, and by the author's friends (who would see the post)."""
        friends_of = {u: {b for a, b in friend_pairs if a == u} for u in users}
        likely = [(v, p.post_id) for p in among for v in friends_of[p.author_id] | {p.author_id}]
        anyone = [(v, p.post_id) for p in among for v in users]
        if not anyone:
            return []
        viewer_post = (
            st.one_of(st.sampled_from(likely), st.sampled_from(anyone)) if likely else st.sampled_from(anyone)
        )
        kind = st.sampled_from(["hide", "report", "impression"])
        return [(v, p, k) for (v, p), k in _sized_list(draw, st.tuples(viewer_post, kind), max_size)]

    snapshot_events = events(posts, 40)
    live_events = events(posts + live_posts, 20)
    return World(users, friendships, blocks, posts, snapshot_events, live_posts, live_events)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=worlds(), window_days=st.sampled_from([1.0, 2.5, 7.0, 10.0]), cap=st.integers(1, 5))
def test_no_leaks_and_nothing_missing_for_every_viewer(w: World, window_days: float, cap: int) -> None:
    cfgs = [
        RetrievalConfig(window_days=window_days, max_candidates=k, include_own_posts=own)
        for own in (False, True)
        for k in (cap, 20_000)
    ]
    store = _snapshot_store(w)
    for viewer in w.users:
        for cfg in cfgs:
            _check(store, w, viewer, cfg, live=False)
    records = _live_records(w)
    assert store.apply(records) == len(records)
    assert store.apply(records) == 0  # a replay changes nothing
    for viewer in w.users:
        for cfg in cfgs:
            _check(store, w, viewer, cfg, live=True)


# ----------------------------------------------------------------------------------------- examples
def _ids(store: EmbeddedStore, viewer: int, now_s: float = NOW_S, **cfg: Any) -> list[int]:
    return retrieve(store, viewer, now_s, RetrievalConfig(**cfg)).post_ids.tolist()


def _ago(hours: float) -> int:
    return NOW_MS - int(hours * HOUR_MS)


LONG_AGO = NOW_MS - 30 * DAY_MS


def test_friends_only_and_private_posts() -> None:
    # 1 — 2 — 3 are friends in a line; 2 posts public, friends-only and private; 3 posts privately.
    w = World(
        users=[1, 2, 3],
        friendships=[(1, 2, LONG_AGO), (3, 2, LONG_AGO)],
        posts=[
            Post(10, 2, _ago(3), "public"),
            Post(11, 2, _ago(2), "friends"),
            Post(12, 2, _ago(1), "private"),
            Post(13, 3, _ago(1), "private"),
        ],
    )
    store = _store(w)
    assert _ids(store, 1) == [11, 10]
    assert _ids(store, 3) == [11, 10]
    assert _ids(store, 2) == []  # 3's only post is private
    assert _ids(store, 2, include_own_posts=True) == [12, 11, 10]  # an author sees all their own posts
    assert _ids(store, 1, include_own_posts=True) == [11, 10]
    assert _ids(store, 1, max_candidates=1) == [11]


def test_blocks_cut_both_directions() -> None:
    # Everyone is friends with everyone; 1 blocked 2, and 3 blocked 1.
    users = [1, 2, 3, 4]
    w = World(
        users=users,
        friendships=[(a, b, LONG_AGO) for a in users for b in users if a < b],
        blocks=[(1, 2), (3, 1)],
        posts=[
            Post(10 + u, u, _ago(u), "public")
            for u in users  # 11, 12, 13, 14
        ]
        + [Post(20 + u, u, _ago(10 + u), "friends") for u in users],  # 21, 22, 23, 24
    )
    store = _store(w)
    assert _ids(store, 1) == [14, 24]
    assert _ids(store, 2) == [13, 14, 23, 24]
    assert _ids(store, 3) == [12, 14, 22, 24]
    assert _ids(store, 4) == [11, 12, 13, 21, 22, 23]


def test_deleted_future_and_out_of_window_posts() -> None:
    week = 7 * DAY_MS
    w = World(
        users=[1, 2],
        friendships=[(1, 2, LONG_AGO)],
        posts=[
            Post(10, 2, _ago(1)),
            Post(11, 2, _ago(2), deleted_ms=_ago(1)),
            Post(12, 2, _ago(2), deleted_ms=NOW_MS + HOUR_MS),  # deleted "later" is deleted
            Post(13, 2, NOW_MS),  # created at now: not yet
            Post(14, 2, NOW_MS + 1),
            Post(15, 2, NOW_MS - week),  # the window's first millisecond
            Post(16, 2, NOW_MS - week - 1),
            Post(17, 1, _ago(1), deleted_ms=_ago(0.5)),  # the viewer's own deleted post
        ],
    )
    store = _store(w)
    assert _ids(store, 1, window_days=7) == [10, 15]
    assert _ids(store, 1, window_days=7, include_own_posts=True) == [10, 15]
    assert _ids(store, 1, window_days=1) == [10]
    # An hour later the post created at "now" (and the one a millisecond after) exist.
    assert _ids(store, 1, now_s=NOW_S + 3600, window_days=1) == [14, 13, 10]


def test_hidden_and_reported_posts_never_come_back() -> None:
    w = World(
        users=[1, 2, 3],
        friendships=[(1, 2, LONG_AGO), (3, 2, LONG_AGO)],
        posts=[Post(10 + i, 2, _ago(i + 1)) for i in range(4)],  # 10 (newest) .. 13
        events=[(1, 10, "hide"), (1, 11, "report"), (1, 12, "impression")],
    )
    store = _snapshot_store(w)
    assert _ids(store, 1) == [12, 13]
    assert _ids(store, 3) == [10, 11, 12, 13]  # hides are the hider's own
    live = [
        Post(20, 2, _ago(0.5)),  # a new post by the friend
    ]
    hide_again = {
        "kind": "engagement",
        "id": "ev:again",
        "event_id": "ev:again",
        "viewer_id": 1,
        "post_id": 10,
        "impression_id": None,
        "type": "hide",
        "at_ms": NOW_MS - 60_000,
        "dwell_ms": None,
    }
    w.live_posts = live
    w.live_events = [(1, 13, "hide")]
    assert store.apply([*_live_records(w), hide_again]) == 3
    assert _ids(store, 1) == [20, 12]
    w.live_events.append((1, 20, "report"))
    store.apply(_live_records(w))
    assert _ids(store, 1) == [12]
    assert store.apply([*_live_records(w), hide_again]) == 0  # replaying changes nothing
    assert _ids(store, 1) == [12]
    assert _ids(store, 3) == [20, 10, 11, 12, 13]


def test_friendship_counts_only_once_it_started() -> None:
    w = World(
        users=[1, 2, 3, 4],
        friendships=[(1, 2, NOW_MS + HOUR_MS), (3, 1, NOW_MS), (1, 4, NOW_MS - 1)],
        posts=[Post(10 + u, u, _ago(5 - u), "public") for u in (2, 3, 4)]
        + [Post(20 + u, u, _ago(5 - u), "friends") for u in (2, 3, 4)],
    )
    store = _store(w)
    assert _ids(store, 1) == [14, 24]
    assert _ids(store, 4) == []  # 1 has no posts
    # Two hours later every friendship has started.
    assert _ids(store, 1, now_s=NOW_S + 7200) == [14, 24, 13, 23, 12, 22]


def test_seen_flags_posts_with_an_impression() -> None:
    w = World(
        users=[1, 2],
        friendships=[(1, 2, LONG_AGO)],
        posts=[Post(10 + i, 2, _ago(i + 1)) for i in range(4)],  # 10 (newest) .. 13
        events=[(1, 11, "impression"), (2, 12, "impression"), (1, 13, "impression"), (1, 13, "hide")],
        live_events=[(1, 10, "impression")],
    )
    store = _snapshot_store(w)
    got = retrieve(store, 1, NOW_S, RetrievalConfig())
    assert got.post_ids.tolist() == [10, 11, 12]  # seen posts stay candidates; hidden ones do not
    assert got.seen.tolist() == [False, True, False]  # 12 was shown to someone else
    store.apply(_live_records(w))
    got = retrieve(store, 1, NOW_S, RetrievalConfig())
    assert got.post_ids.tolist() == [10, 11, 12]
    assert got.seen.tolist() == [True, True, False]


def test_a_snapshot_from_an_older_version_says_to_rebuild_it() -> None:
    """An online snapshot without the columns serving reads now (all-time counters, school and work codes)
    is refused at load with what to do, not a KeyError in the first request."""
    w = World(users=[1, 2], friendships=[], blocks=[], posts=[Post(10, 1, NOW_MS - DAY_MS)], events=[])
    tables = _world_tables(w.users, w.friendships, w.blocks, w.posts, w.events)
    old = {**tables, "posts": tables["posts"].drop_columns(["p_click_all"])}
    with pytest.raises(ValueError, match=r"p_click_all.*rerun python -m pipelines.features"):
        EmbeddedStore.from_tables(old, NOW_S, WINDOWS, VOCAB)
    old = {**tables, "users": tables["users"].drop_columns(["work_code"])}
    with pytest.raises(ValueError, match="work_code"):
        EmbeddedStore.from_tables(old, NOW_S, WINDOWS, VOCAB)


# ------------------------------------------------------------------------------- out-of-network retrieval
def random_retriever(topic_dim: int, media_dim: int, text_dim: int, seed: int = 0) -> Any:
    """A two-tower retriever with random weights over columns every online store has (the tests here and
    in ``test_suggested.py`` check plumbing and rules, not its quality)."""
    import torch

    from models.batch import FeatureLayout, SparseEncoder
    from models.retriever import RetrieverSpec, ServableRetriever, TwoTowerRetriever

    torch.manual_seed(seed)
    viewer = FeatureLayout(dense=("u_friends",), vectors={"u_topic_share": topic_dim}, sparse=())
    post = FeatureLayout(
        dense=(), vectors={"p_media": media_dim, "p_text_emb": text_dim}, sparse=("sp_modality",)
    )
    prior = FeatureLayout(dense=("p_age_h",), vectors={}, sparse=())
    spec = RetrieverSpec(
        sparse={"sp_modality": 8},
        viewer_dense=viewer.n_dense,
        post_dense=post.n_dense,
        viewer_sparse=(),
        post_sparse=("sp_modality",),
        prior_dense=1,
        embedding_dim=4,
        tower_mlp=(16,),
        out_dim=8,
    )
    return ServableRetriever(
        TwoTowerRetriever(spec), viewer, post, SparseEncoder(codes={"sp_modality": 8}), prior
    )


def _check_suggested(
    store: EmbeddedStore,
    w: World,
    viewer: int,
    cfg: RetrievalConfig,
    index: Any,
    live: bool,
    now_ms: int = NOW_MS,
    complete: bool = True,
) -> None:
    from serve.retrieval import suggested

    now_s = now_ms / 1000
    got = suggested(store, viewer, now_s, cfg, index, retrieve(store, viewer, now_s, cfg))
    ids = got.post_ids.tolist()
    by_id = {p.post_id: p for p in _all_posts(w, live)}
    v = Viewer.of(w, viewer, live, now_ms)
    where = f"viewer {viewer}, window {cfg.window_days}, live={live}, now {now_ms - NOW_MS:+d} ms"
    assert len(set(ids)) == len(ids), where
    assert got.suggested.all(), where
    for pid in ids:
        p = by_id[pid]
        assert _allowed(v, p, now_ms), f"LEAK: {p} ({where})"
        assert p.visibility == "public", f"not public: {p} ({where})"
        assert p.author_id not in v.friends | {viewer}, f"in-network: {p} ({where})"
        assert _window_start_ms(cfg, now_ms) <= p.created_ms < now_ms, f"outside the window: {p} ({where})"
    if not complete:
        return
    expected = {
        p.post_id
        for p in _all_posts(w, live)
        if p.visibility == "public"
        and _allowed(v, p)
        and p.author_id not in v.friends
        and p.author_id != viewer
        and p.created_ms >= _window_start_ms(cfg)
    }
    assert set(ids) == expected, f"got {sorted(ids)}, expected {sorted(expected)} ({where})"
    assert got.retrieval_score is not None
    assert list(got.retrieval_score) == sorted(got.retrieval_score, reverse=True), where


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=worlds(), window_days=st.sampled_from([1.0, 2.5, 7.0]))
def test_suggested_posts_never_leak_and_none_is_missed(w: World, window_days: float) -> None:
    """Out-of-network candidates from the index (every post it holds asked for): exactly the public posts
    of the window by strangers the viewer may see, before and after live posts and events."""
    from serve.index import PostIndex

    cfg = RetrievalConfig(window_days=window_days, out_of_network=5000, oversample=1.0)
    retriever = random_retriever(TOPIC_SHARE_DIM, MEDIA_DIM, TEXT_DIM)
    store = _snapshot_store(w)
    index = PostIndex(retriever, "1", window_days * 86400)
    index.catch_up(store, NOW_S)
    for viewer in w.users:
        _check_suggested(store, w, viewer, cfg, index, live=False)
    store.apply(_live_records(w))
    index.catch_up(store, NOW_S)  # live posts become retrievable
    for viewer in w.users:
        _check_suggested(store, w, viewer, cfg, index, live=True)
    # An index built earlier, asked later: entries that aged out of the window, friendships that started
    # since (their authors are in-network now) and posts that began to exist meanwhile.
    for viewer in w.users:
        _check_suggested(store, w, viewer, cfg, index, live=True, now_ms=NOW_MS + DAY_MS, complete=False)
