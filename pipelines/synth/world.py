"""The synthetic social network: users in cities, communities, a heavy-tailed friend graph, blocks,
posts, sessions under a noisy reverse-chronological logging policy, and the hidden engagement model
(the truth) that decides what users do."""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.common import schema
from pipelines.common.config import SynthConfig
from pipelines.common.io import write_by_date
from pipelines.synth.vocab import CLOSERS, LINKERS, OPENERS, TOPIC_WORDS, TOPICS

log = logging.getLogger(__name__)


DAY = 86400
WARMUP_DAYS = 2  # posts start this many days before the first session, so day one has a feed
SKIP_DWELL_MS = 2000  # the threshold the truth's p_skip refers to (features' default skip_dwell_ms)
DWELL_SIGMA = 0.9
CLICK_DWELL_FACTOR = 3.0
# Hourly session weights (UTC stands in for local time): quiet nights, peaks at breakfast, lunch, evening.
HOUR_WEIGHTS = np.array(
    [1, 0.5, 0.3, 0.2, 0.3, 0.8, 2, 3.5, 4, 3, 2.5, 3, 4, 3.5, 2.5, 2.5, 3, 3.5, 4.5, 5.5, 6, 5.5, 4, 2.5]
)
HOUR_CDF = np.cumsum(HOUR_WEIGHTS) / HOUR_WEIGHTS.sum()
MODALITY_SHARE = np.array([0.5, 0.35, 0.15])  # text, image, video
VISIBILITY_SHARE = np.array([0.3, 0.65, 0.05])  # public, friends, private
GENDER_SHARE = np.array([0.49, 0.48, 0.02, 0.01])
#: Tie strength the truth gives a viewer and an author who are not friends (friends: 0.25–1, times noise).
STRANGER_TIE = 0.35


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _norm_cdf(x: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr

    return np.asarray(ndtr(x))


def _diurnal_times(rng: np.random.Generator, n: int, start_s: float, days: int) -> np.ndarray:
    day = rng.integers(0, days, size=n)
    hour = np.searchsorted(HOUR_CDF, rng.random(n))
    return start_s + day * DAY + hour * 3600 + rng.random(n) * 3600


@dataclass
class World:
    """The hidden world shared by every generation task (numpy arrays only, shared via the object store).

    Users are ``0..n-1``; the graph and each author's posts are in CSR form (``*_ptr`` offsets).
    """

    start_s: float
    days: int
    user_ids: np.ndarray  # (N,) public ids
    city: np.ndarray  # (N,) int
    interest: np.ndarray  # (N, T) rows sum to 1
    click_prop: np.ndarray  # (N,)
    like_prop: np.ndarray  # (N,)
    session_rate: np.ndarray  # (N,) sessions per day
    modality_pref: np.ndarray  # (N, 3)
    nbr_ptr: np.ndarray  # (N+1,)
    nbr_idx: np.ndarray  # (2E,)
    nbr_since: np.ndarray  # (2E,) friendship created_at, seconds
    nbr_tie: np.ndarray  # (2E,) hidden tie strength
    block_keys: np.ndarray  # sorted a*N+b for both directions
    post_ptr: np.ndarray  # (N+1,) posts of author u: post_ptr[u]:post_ptr[u+1], by created time
    post_ids: np.ndarray  # (P,)
    post_created: np.ndarray  # (P,) seconds
    post_deleted: np.ndarray  # (P,) seconds, +inf when never deleted
    post_visibility: np.ndarray  # (P,) index into schema.VISIBILITIES
    post_modality: np.ndarray  # (P,) index into schema.MODALITIES
    post_author: np.ndarray  # (P,) user index
    post_by_time: np.ndarray  # (P,) post indices in created order
    post_created_sorted: np.ndarray  # (P,) post_created[post_by_time], ascending
    post_topics: np.ndarray  # (P, T) normalized multi-hot
    post_quality: np.ndarray  # (P,)
    post_duration: np.ndarray  # (P,) seconds, 0 unless video
    cold: np.ndarray  # (N,) bool: joined on the last day (sessions on it only)
    social_graph: bool  # False: candidates come from every author (no friends)


# --------------------------------------------------------------------------------------------- the world
def _make_users(
    cfg: SynthConfig, rng: np.random.Generator, start_s: float
) -> tuple[pa.Table, dict[str, Any]]:
    n, t = cfg.users, len(TOPICS)
    city_w = 1.0 / np.arange(1, cfg.cities + 1) ** 0.8
    city = rng.choice(cfg.cities, size=n, p=city_w / city_w.sum())
    age = np.clip(np.round(rng.gamma(4.0, 8.0, size=n) + 13), schema.MIN_AGE, 85).astype(np.int16)
    gender = rng.choice(len(schema.GENDERS), size=n, p=GENDER_SHARE)
    school = city * cfg.schools_per_city + rng.integers(0, cfg.schools_per_city, size=n)
    has_work = (age >= 23) & (rng.random(n) < 0.8)
    work = np.where(
        has_work, city * cfg.workplaces_per_city + rng.integers(0, cfg.workplaces_per_city, n), -1
    )
    # Interests: sparse personal taste mixed with the taste of one's community.
    n_comm = cfg.cities * cfg.schools_per_city
    comm_taste = rng.dirichlet(np.full(t, 0.5), size=n_comm)
    interest = 0.75 * rng.dirichlet(np.full(t, 0.25), size=n) + 0.25 * comm_taste[school]
    interest /= interest.sum(1, keepdims=True)
    active = rng.random(n) < 0.3  # most users are passive readers
    click_prop = np.where(active, rng.normal(0.6, 0.5, n), rng.normal(-1.4, 0.5, n))
    like_prop = 0.6 * click_prop + rng.normal(0, 0.4, n)
    sess = rng.lognormal(0.0, 0.7, n)
    session_rate = cfg.sessions_per_user_day * sess / sess.mean()
    post_r = rng.lognormal(0.0, 1.0, n)
    post_rate = cfg.posts_per_user_day * post_r / post_r.mean()
    joined = start_s - rng.uniform(30 * DAY, 3 * 365 * DAY, n)
    # Cold-start users join on the last day: no history before the test split (their own stream, so a
    # world without them is drawn exactly as before).
    cold = (
        _rng(cfg.seed, 4).random(n) < cfg.cold_start_share if cfg.cold_start_share > 0 else np.zeros(n, bool)
    )
    joined = np.where(cold, start_s + (cfg.days - 1) * DAY - 3600, joined)
    post_rate = np.where(cold, 0.0, post_rate)
    user_ids = np.arange(1, n + 1, dtype=np.int64) * 7 + 100_000  # opaque, non-contiguous public ids
    users = pa.table(
        {
            "user_id": pa.array(user_ids),
            "age": pa.array(age, pa.int16()),
            "gender": pa.array(np.array(schema.GENDERS)[gender]),
            "city": pa.array([f"city_{c:02d}" for c in city]),
            "school": pa.array([f"school_{s:03d}" for s in school]),
            "work": pa.array([f"work_{w:03d}" if w >= 0 else None for w in work], pa.string()),
            "joined_at": pa.array((joined * 1000).astype(np.int64)).cast(schema.TS),
        },
        schema=schema.USERS,
    )
    hidden = dict(
        city=city,
        school=school,
        work=work,
        interest=interest.astype(np.float32),
        click_prop=click_prop,
        like_prop=like_prop,
        session_rate=session_rate,
        post_rate=post_rate,
        joined=joined,
        cold=cold,
        user_ids=user_ids,
        modality_pref=rng.normal(0, 0.5, (n, 3)),
    )
    return users, hidden


def _sample_in_groups(
    rng: np.random.Generator, group: np.ndarray, weight: np.ndarray, of: np.ndarray
) -> np.ndarray:
    """For each user in ``of``, a user of the same ``group`` drawn proportionally to ``weight``."""
    order = np.argsort(group, kind="stable")
    cum = np.cumsum(weight[order])
    g_sorted = group[order]
    starts = np.searchsorted(g_sorted, group[of], side="left")
    ends = np.searchsorted(g_sorted, group[of], side="right")
    lo = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0.0)
    hi = cum[ends - 1]
    pick = np.searchsorted(cum, lo + rng.random(len(of)) * (hi - lo), side="right")
    return order[np.minimum(pick, len(order) - 1)]


def _make_graph(
    cfg: SynthConfig, rng: np.random.Generator, h: dict[str, Any], start_s: float
) -> tuple[pa.Table, pa.Table, dict[str, np.ndarray]]:
    """Friendships (heavy-tailed degrees, mostly inside communities and cities, capped at max_degree), tie
    strengths, blocks, and the graph in CSR form. The steps draw from ``rng`` in a fixed order."""
    if cfg.social_graph:
        a, b, primary = _friend_edges(cfg, rng, h)
        a, b = _cap_degrees(rng, a, b, cfg.max_degree)
        tie, created = _ties(cfg, rng, h, primary, a, b, start_s)
    else:  # a ratings-style log: nobody is anybody's friend
        a = b = np.zeros(0, np.int64)
        tie = created = np.zeros(0)
    friendships = pa.table(
        {
            "user_a": pa.array(h["user_ids"][a]),
            "user_b": pa.array(h["user_ids"][b]),
            "created_at": pa.array((created * 1000).astype(np.int64)).cast(schema.TS),
        },
        schema=schema.FRIENDSHIPS,
    )
    if cfg.social_graph:
        blocker, blocked, block_at = _blocks(cfg, rng, h, a, b, start_s)
    else:
        blocker = blocked = np.zeros(0, np.int64)
        block_at = np.zeros(0)
    blocks = pa.table(
        {
            "blocker_id": pa.array(h["user_ids"][blocker]),
            "blocked_id": pa.array(h["user_ids"][blocked]),
            "created_at": pa.array((block_at * 1000).astype(np.int64)).cast(schema.TS),
        },
        schema=schema.BLOCKS,
    )
    # Adjacency in CSR form, both directions.
    n = cfg.users
    u = np.concatenate([a, b])  # (2E,)
    v = np.concatenate([b, a])  # (2E,)
    order = np.argsort(u, kind="stable")
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.add.at(ptr, u + 1, 1)
    graph = dict(
        nbr_ptr=np.cumsum(ptr),  # (n + 1,)
        nbr_idx=v[order],
        nbr_since=np.concatenate([created, created])[order],
        nbr_tie=np.concatenate([tie, tie])[order],
        block_keys=np.unique(np.concatenate([blocker * n + blocked, blocked * n + blocker])),
    )
    return friendships, blocks, graph


def _friend_edges(
    cfg: SynthConfig, rng: np.random.Generator, h: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate edges ``(a, b)`` with ``a < b``, unique, from lognormal target degrees: 45% inside the
    user's community (``primary``: workplace, else school), 35% in their city, 20% anywhere."""
    n = cfg.users
    sigma = 1.0
    target = np.minimum(cfg.max_degree, rng.lognormal(math.log(cfg.mean_degree) - sigma**2 / 2, sigma, n))
    n_edges = int(target.sum() / 2)
    src = np.searchsorted(np.cumsum(target) / target.sum(), rng.random(n_edges), side="right")
    src = np.minimum(src, n - 1)  # (E,)
    kind = rng.choice(3, size=n_edges, p=[0.45, 0.35, 0.20])  # community, city, anywhere
    primary = np.where(h["work"] >= 0, h["work"] + 10_000_000, h["school"])  # (n,)
    dst = np.empty(n_edges, dtype=np.int64)
    for k, group in ((0, primary), (1, h["city"]), (2, np.zeros(n, dtype=np.int64))):
        sel = np.flatnonzero(kind == k)
        dst[sel] = _sample_in_groups(rng, group, target, src[sel])
    a, b = np.minimum(src, dst), np.maximum(src, dst)
    keep = a != b
    pairs = np.unique(a[keep] * n + b[keep])
    return pairs // n, pairs % n, primary


def _cap_degrees(
    rng: np.random.Generator, a: np.ndarray, b: np.ndarray, max_degree: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rank each node's edges in a random order and keep an edge only where both ranks fit."""
    perm = rng.permutation(len(a))
    ends = np.concatenate([a[perm], b[perm]])  # (2E,)
    edge = np.concatenate([perm, perm])  # (2E,)
    order = np.lexsort((np.arange(len(ends)), ends))
    first = np.searchsorted(ends[order], ends[order], side="left")
    rank = np.empty(len(ends), dtype=np.int64)
    rank[order] = np.arange(len(ends)) - first
    ok = np.ones(len(a), dtype=bool)
    np.logical_and.at(ok, edge, rank < max_degree)
    return a[ok], b[ok]


def _ties(
    cfg: SynthConfig,
    rng: np.random.Generator,
    h: dict[str, Any],
    primary: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    start_s: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Tie strength (same community > school > city > none, times lognormal noise) and creation time of
    each friendship; ~3% form during the logged days."""
    same_primary = primary[a] == primary[b]
    same_school = h["school"][a] == h["school"][b]
    same_city = h["city"][a] == h["city"][b]
    base = np.select([same_primary, same_school, same_city], [1.0, 0.8, 0.5], 0.25)
    tie = base * rng.lognormal(0.0, 0.5, len(a))  # (E,)
    joined = np.maximum(h["joined"][a], h["joined"][b])
    created = joined + rng.random(len(a)) * (start_s - joined)  # (E,) seconds
    created = np.maximum(created, joined)  # users who join on the last day befriend no one before
    late = rng.random(len(a)) < 0.03
    created[late] = start_s + rng.random(int(late.sum())) * cfg.days * DAY
    return tie, created


def _blocks(
    cfg: SynthConfig,
    rng: np.random.Generator,
    h: dict[str, Any],
    a: np.ndarray,
    b: np.ndarray,
    start_s: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blocks: mostly between strangers of one city, some ending a friendship; ``(blocker, blocked, at)``."""
    n = cfg.users
    n_blocks = round(cfg.block_rate * n)
    from_friends = rng.random(n_blocks) < 0.3
    fe = rng.integers(0, len(a), n_blocks)
    x = np.where(from_friends, a[fe], rng.integers(0, n, n_blocks))
    y = np.where(from_friends, b[fe], _sample_in_groups(rng, h["city"], np.ones(n), x))
    flip = rng.random(n_blocks) < 0.5
    blocker, blocked = np.where(flip, y, x), np.where(flip, x, y)
    keep = blocker != blocked
    bkeys = np.unique(blocker[keep] * n + blocked[keep])
    blocker, blocked = bkeys // n, bkeys % n
    return blocker, blocked, start_s - rng.random(len(blocker)) * 60 * DAY


def _post_text(rng: np.random.Generator, topics: list[int]) -> str:
    words = [TOPIC_WORDS[TOPICS[t]] for t in topics]
    w1 = words[0][rng.integers(len(words[0]))]
    w2_src = words[rng.integers(len(words))]
    w2 = w2_src[rng.integers(len(w2_src))]
    return (
        f"{OPENERS[rng.integers(len(OPENERS))]} {w1} {LINKERS[rng.integers(len(LINKERS))]} {w2}"
        f"{CLOSERS[rng.integers(len(CLOSERS))]}"
    )


def _make_posts(
    cfg: SynthConfig, rng: np.random.Generator, h: dict[str, Any], start_s: float
) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """Posts of every user (Poisson at their rate) from ``WARMUP_DAYS`` before the first session: topics
    drawn from the author's interests, a hidden quality (author's + post's), media vectors that carry
    topic and quality, text from the topics' words. The steps draw from ``rng`` in a fixed order."""
    n = cfg.users
    span = cfg.days + WARMUP_DAYS
    counts = rng.poisson(h["post_rate"] * span)
    author = np.repeat(np.arange(n), counts)  # (P,) user index
    p = len(author)
    created = _diurnal_times(rng, p, start_s - WARMUP_DAYS * DAY, span)
    order = np.lexsort((created, author))  # CSR by author, then time
    author, created = author[order], created[order]
    # Time-ordered public ids, as snowflake-style ids are.
    post_ids = np.empty(p, dtype=np.int64)
    post_ids[np.argsort(created, kind="stable")] = 5_000_000 + np.arange(p, dtype=np.int64) * 3
    modality = rng.choice(3, size=p, p=MODALITY_SHARE)  # (P,) text, image, video
    visibility = rng.choice(3, size=p, p=VISIBILITY_SHARE)  # (P,) public, friends, private
    if not cfg.social_graph:
        visibility[:] = 0  # without friends, every post is public
    topic_idx, multi_hot = _post_topics(rng, h["interest"], author)
    quality = rng.normal(0, 0.7, n)[author] + rng.normal(0, 0.7, p)  # (P,) author's + the post's own
    duration = np.where(modality == 2, rng.lognormal(math.log(25), 0.8, p), 0.0)
    deleted = np.where(rng.random(p) < cfg.deletion_rate, created + rng.exponential(DAY, p), np.inf)
    centroids = rng.normal(0, 1, (len(TOPICS), cfg.media_dim))
    quality_dir = rng.normal(0, 1, cfg.media_dim) / math.sqrt(cfg.media_dim)
    noise = rng.normal(0, 0.7, (p, cfg.media_dim))
    media = multi_hot @ centroids + 0.8 * quality[:, None] * quality_dir + noise  # (P, media_dim)
    texts, topic_lists = _post_texts(rng, topic_idx, modality)
    columns = dict(
        post_ids=post_ids,
        author_ids=h["user_ids"][author],
        created=created,
        modality=modality,
        visibility=visibility,
        deleted=deleted,
        duration=duration,
        media=media,
    )
    posts = _posts_table(texts, topic_lists, **columns)
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.add.at(ptr, author + 1, 1)
    hidden = dict(
        post_ptr=np.cumsum(ptr),
        post_ids=post_ids,
        post_created=created,
        post_deleted=deleted,
        post_visibility=visibility,
        post_modality=modality,
        post_author=author,
        post_by_time=(by_time := np.argsort(created, kind="stable")),
        post_created_sorted=created[by_time],
        post_topics=multi_hot,
        post_quality=quality,
        post_duration=duration,
    )
    return posts, hidden


def _post_topics(
    rng: np.random.Generator, interest: np.ndarray, author: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """1–3 topics per post, each the author's (drawn from their interests) 80% of the time; returns
    ``(P, 3)`` topic indices (-1 = none) and the ``(P, T)`` normalized multi-hot."""
    p, t = len(author), len(TOPICS)
    n_topics = 1 + rng.binomial(2, 0.3, p)
    cum = np.cumsum(interest, axis=1)[author]  # (P, T)
    topic_idx = np.full((p, 3), -1, dtype=np.int64)
    for k in range(3):
        own = np.minimum((cum < rng.random(p)[:, None]).sum(1), t - 1)
        rand = rng.integers(0, t, p)
        pick = np.where(rng.random(p) < 0.8, own, rand)
        topic_idx[:, k] = np.where(k < n_topics, pick, -1)
    multi_hot = np.zeros((p, t), dtype=np.float32)
    for k in range(3):
        sel = topic_idx[:, k] >= 0
        multi_hot[np.flatnonzero(sel), topic_idx[sel, k]] = 1.0
    multi_hot /= multi_hot.sum(1, keepdims=True)
    return topic_idx, multi_hot


def _post_texts(
    rng: np.random.Generator, topic_idx: np.ndarray, modality: np.ndarray
) -> tuple[list[str | None], list[list[str]]]:
    """Each post's text from its topics' words (10% of media posts have none) and its topic names."""
    texts: list[str | None] = []
    topic_lists: list[list[str]] = []
    for i in range(len(topic_idx)):
        tl = list(dict.fromkeys(int(x) for x in topic_idx[i] if x >= 0))
        topic_lists.append([TOPICS[x] for x in tl])
        texts.append(None if modality[i] != 0 and rng.random() < 0.1 else _post_text(rng, tl))
    return texts, topic_lists


def _posts_table(
    texts: list[str | None],
    topic_lists: list[list[str]],
    *,
    post_ids: np.ndarray,
    author_ids: np.ndarray,
    created: np.ndarray,
    modality: np.ndarray,
    visibility: np.ndarray,
    deleted: np.ndarray,
    duration: np.ndarray,
    media: np.ndarray,
) -> pa.Table:
    """The raw ``posts`` table (:data:`schema.POSTS`) from the generated columns (times in seconds)."""
    has_media = modality != 0
    return pa.table(
        {
            "post_id": pa.array(post_ids),
            "author_id": pa.array(author_ids),
            "created_at": pa.array((created * 1000).astype(np.int64)).cast(schema.TS),
            "modality": pa.array(np.array(schema.MODALITIES)[modality]),
            "text": pa.array(texts, pa.string()),
            "topics": pa.array(topic_lists, pa.list_(pa.string())),
            "visibility": pa.array(np.array(schema.VISIBILITIES)[visibility]),
            "deleted_at": pa.array(
                np.where(np.isfinite(deleted), deleted * 1000, 0).astype(np.int64), mask=~np.isfinite(deleted)
            ).cast(schema.TS),
            "media_duration_s": pa.array(
                np.where(modality == 2, duration, np.nan), pa.float32(), from_pandas=True
            ),
            "media_vector": pa.array(
                [media[i].astype(np.float32) if has_media[i] else None for i in range(len(post_ids))],
                pa.list_(pa.float32()),
            ),
        },
        schema=schema.POSTS,
    )


def build_world(cfg: SynthConfig) -> tuple[World, dict[str, pa.Table]]:
    """The users, graph and posts (driver side, O(users + posts) memory) and the hidden world."""
    start_s = dt.datetime.combine(cfg.start_date, dt.time(), tzinfo=dt.UTC).timestamp()
    users, h = _make_users(cfg, _rng(cfg.seed, 1), start_s)
    friendships, blocks, graph = _make_graph(cfg, _rng(cfg.seed, 2), h, start_s)
    posts, ph = _make_posts(cfg, _rng(cfg.seed, 3), h, start_s)
    world = World(
        start_s=start_s,
        days=cfg.days,
        user_ids=h["user_ids"],
        city=h["city"],
        interest=h["interest"],
        click_prop=h["click_prop"],
        like_prop=h["like_prop"],
        session_rate=h["session_rate"],
        modality_pref=h["modality_pref"],
        cold=h["cold"],
        social_graph=cfg.social_graph,
        **graph,
        **ph,
    )
    tables = {"users": users, "friendships": friendships, "blocks": blocks, "posts": posts}
    return world, tables


# ------------------------------------------------------------------------------------------------ sessions
def _serve_sessions(
    w: World, cfg: SynthConfig, rng: np.random.Generator, lo: int, hi: int
) -> dict[str, np.ndarray]:
    """Run the logging policy for viewers ``lo..hi-1``: one row per impression. Each session shows a
    geometric number of posts, newest first with hours of jitter, from the viewer's friends' visible
    posts of the last ``candidate_days`` (or, without a social graph, from ``open_candidates`` recent
    posts of anyone), never one shown to the viewer before. With a social graph, ``explore_share`` of the
    slots (binomial per session) go to random recent public posts by non-friends, at random positions."""
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("viewer", "post", "tie", "t", "pos", "req")}
    req = 0
    for v in range(lo, hi):
        if w.cold[v]:  # joined on the last day: sessions on it only
            n_sess = rng.poisson(w.session_rate[v])
            times = np.sort(_diurnal_times(rng, n_sess, w.start_s + (w.days - 1) * DAY, 1))
        else:
            n_sess = rng.poisson(w.session_rate[v] * w.days)
            times = np.sort(_diurnal_times(rng, n_sess, w.start_s, w.days)) if n_sess else np.zeros(0)
        if n_sess == 0:
            continue
        pool = _FriendPool(w, v) if w.social_graph else _OpenPool(w, v, cfg.open_candidates)
        if not pool:
            continue
        strangers = None  # the exploring half of the policy: strangers' public posts
        if isinstance(pool, _FriendPool) and cfg.explore_share > 0:
            strangers = _OpenPool(w, v, cfg.open_candidates, outside=pool.authors)
        for t in times:
            cand, cand_tie = pool.candidates(t, cfg.candidate_days * DAY, rng)
            if len(cand) == 0:
                continue
            length = min(len(cand), int(rng.geometric(1.0 / cfg.impressions_per_session)))
            # Noisy reverse-chronological: newest first, with hours of jitter.
            score = w.post_created[cand] + rng.gumbel(0.0, 4 * 3600, len(cand))
            top = np.argsort(-score)[:length]
            posts, ties, explored = cand[top], cand_tie[top], 0
            if strangers is not None and (n_explore := int(rng.binomial(length, cfg.explore_share))):
                posts, ties, explored = _explore(
                    strangers, posts, ties, n_explore, t, cfg.candidate_days * DAY, rng
                )
            pool.mark_shown(cand[top][: length - explored])
            out["viewer"].append(np.full(len(posts), v))
            out["post"].append(posts)
            out["tie"].append(ties)
            out["t"].append(np.full(len(posts), t))
            out["pos"].append(np.arange(len(posts)))
            out["req"].append(np.full(len(posts), req))
            req += 1
    if not out["viewer"]:
        empty = {"viewer": np.zeros(0, np.int64), "post": np.zeros(0, np.int64), "req": np.zeros(0, np.int64)}
        return {**empty, "tie": np.zeros(0), "t": np.zeros(0), "pos": np.zeros(0, np.int64)}
    return {k: np.concatenate(vs) for k, vs in out.items()}


class _FriendPool:
    """A viewer's candidates in a social network: the visible posts of friends they have not blocked, with
    the friendship's tie strength."""

    def __init__(self, w: World, v: int) -> None:
        n = len(w.user_ids)
        f = w.nbr_idx[w.nbr_ptr[v] : w.nbr_ptr[v + 1]]
        since = w.nbr_since[w.nbr_ptr[v] : w.nbr_ptr[v + 1]]
        tie = w.nbr_tie[w.nbr_ptr[v] : w.nbr_ptr[v + 1]]
        keys = v * n + f
        pos_in_blocks = np.minimum(np.searchsorted(w.block_keys, keys), max(len(w.block_keys) - 1, 0))
        blocked = (w.block_keys[pos_in_blocks] == keys) if len(w.block_keys) else np.zeros(len(f), bool)
        f, since, tie = f[~blocked], since[~blocked], tie[~blocked]
        counts = w.post_ptr[f + 1] - w.post_ptr[f]  # (F,) posts per friend
        starts = np.repeat(w.post_ptr[f], counts)
        pool = starts + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
        visible = w.post_visibility[pool] != 2  # private posts reach nobody but their author
        self.authors = w.nbr_idx[w.nbr_ptr[v] : w.nbr_ptr[v + 1]]  # every friend, blocked ones too
        self.pool = pool[visible]  # (C,) post indices
        self.since = np.repeat(since, counts)[visible]  # (C,) friendship start
        self.tie = np.repeat(tie, counts)[visible]  # (C,)
        self.created = w.post_created[self.pool]
        self.deleted = w.post_deleted[self.pool]
        self.shown = np.zeros(len(self.pool), dtype=bool)
        self._index = {int(p): i for i, p in enumerate(self.pool)}

    def __bool__(self) -> bool:
        return len(self.pool) > 0

    def candidates(self, t: float, window: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        ok = (self.created < t) & (self.created >= t - window) & (self.deleted > t) & (self.since < t)
        cand = np.flatnonzero(ok & ~self.shown)
        return self.pool[cand], self.tie[cand]

    def mark_shown(self, posts: np.ndarray) -> None:
        self.shown[[self._index[int(p)] for p in posts]] = True


class _OpenPool:
    """A viewer's candidates among strangers: ``k`` posts drawn at random among everyone's recent posts
    (not their own), all of them strangers' (tie :data:`STRANGER_TIE`). With ``outside`` (the viewer's
    friends, blocked ones included), public posts of authors outside it and not blocked either way: the
    out-of-network posts the exploring logging policy shows beside friends' posts."""

    def __init__(self, w: World, v: int, k: int, outside: np.ndarray | None = None) -> None:
        self.w, self.v, self.k = w, v, k
        self.outside = outside
        self.shown: set[int] = set()

    def __bool__(self) -> bool:
        return len(self.w.post_by_time) > 0

    def candidates(self, t: float, window: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = np.searchsorted(self.w.post_created_sorted, [t - window, t])
        if hi <= lo:
            return np.zeros(0, np.int64), np.zeros(0)
        drawn = self.w.post_by_time[lo + rng.choice(hi - lo, size=min(self.k, hi - lo), replace=False)]
        author = self.w.post_author[drawn]
        ok = (self.w.post_deleted[drawn] > t) & (author != self.v)
        if self.outside is not None:
            n = len(self.w.user_ids)
            ok &= (self.w.post_visibility[drawn] == 0) & ~np.isin(author, self.outside)
            if len(keys := self.w.block_keys):  # blocked either way
                for pair in (self.v * n + author, author * n + self.v):
                    at = np.minimum(np.searchsorted(keys, pair), len(keys) - 1)
                    ok &= keys[at] != pair
        ok &= np.array([int(p) not in self.shown for p in drawn], dtype=bool)
        cand = drawn[ok]
        return cand, np.full(len(cand), STRANGER_TIE)

    def mark_shown(self, posts: np.ndarray) -> None:
        self.shown.update(int(p) for p in posts)


def _explore(
    strangers: _OpenPool,
    posts: np.ndarray,
    ties: np.ndarray,
    n: int,
    t: float,
    window: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, int]:
    """The session's last ``n`` friend slots given to ``n`` random out-of-network posts (fewer when fewer
    are eligible), each moved to a random position of the session; returns how many were given."""
    cand, cand_tie = strangers.candidates(t, window, rng)
    n = min(n, len(cand))
    if n == 0:
        return posts, ties, 0
    strangers.mark_shown(cand[:n])
    keep = len(posts) - n
    out_posts, out_ties = np.empty(len(posts), posts.dtype), np.empty(len(posts))
    slots = np.zeros(len(posts), bool)
    slots[rng.choice(len(posts), n, replace=False)] = True
    out_posts[slots], out_ties[slots] = cand[:n], cand_tie[:n]
    out_posts[~slots], out_ties[~slots] = posts[:keep], ties[:keep]
    return out_posts, out_ties, n


def engagement_truth(w: World, s: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The hidden engagement model: probabilities per impression for every task."""
    v, p = s["viewer"], s["post"]
    t_count = w.interest.shape[1]
    match = (w.interest[v] * w.post_topics[p]).sum(1) * t_count
    z_int = 1.2 * np.log1p(match) - 1.0
    z_tie = 0.8 * np.log(s["tie"])
    q = w.post_quality[p]
    age_h = (s["t"] - w.post_created[p]) / 3600
    z_rec = -0.5 * np.log1p(age_h / 6)
    z_mod = w.modality_pref[v, w.post_modality[p]]
    z_pos = -0.08 * s["pos"]
    z = z_int + z_tie + 0.5 * q + z_rec + z_mod
    cp, lp = w.click_prop[v], w.like_prop[v]
    p_click = _sigmoid(-1.7 + cp + z + z_pos)
    p_like = _sigmoid(-1.4 + lp + z + 0.3 * q + z_pos)
    p_comment = _sigmoid(-3.4 + lp + z + 0.8 * z_tie + z_pos)
    p_share = _sigmoid(-4.0 + lp + z + 0.7 * q + z_pos)
    p_hide = _sigmoid(-5.6 - 1.2 * z_int - 0.8 * q - 0.5 * z_tie)
    p_report = _sigmoid(-8.5 - 1.5 * q)
    mod = w.post_modality[p]
    base_ms = np.select(
        [mod == 0, mod == 1], [3500.0, 2500.0], np.minimum(w.post_duration[p], 30) * 500 + 1500
    )
    mu = np.log(base_ms) + 0.5 * z_int + 0.2 * q + 0.2 * z_tie
    mean_view = np.exp(mu + DWELL_SIGMA**2 / 2)
    expected_dwell = mean_view * ((1 - p_click) + p_click * CLICK_DWELL_FACTOR)
    thr = math.log(SKIP_DWELL_MS)
    p_skip = (1 - p_click) * _norm_cdf((thr - mu) / DWELL_SIGMA) + p_click * _norm_cdf(
        (thr - mu - math.log(CLICK_DWELL_FACTOR)) / DWELL_SIGMA
    )
    return dict(
        p_click=p_click,
        p_like=p_like,
        p_comment=p_comment,
        p_share=p_share,
        p_hide=p_hide,
        p_report=p_report,
        expected_dwell_ms=expected_dwell,
        p_skip=p_skip,
        mu=mu,
    )


def _ts(seconds: np.ndarray) -> pa.Array:
    return pa.array(np.round(seconds * 1000).astype(np.int64)).cast(schema.TS)


def generate_chunk(w: World, cfg: SynthConfig, chunk: int, lo: int, hi: int, out: str) -> dict[str, int]:
    """Sessions, impressions, engagements and truth for viewers ``lo..hi-1``; writes its own files."""
    rng = _rng(cfg.seed, 100, chunk)
    s = _serve_sessions(w, cfg, rng, lo, hi)
    m = len(s["viewer"])
    if m == 0:
        return {"impressions": 0, "engagements": 0}
    imp_ids = np.array([f"imp-{chunk:05d}-{i:08d}" for i in range(m)], dtype=object)
    truth = engagement_truth(w, s)
    ev = _engagement_events(w, s, truth, rng)
    k = len(ev["idx"])
    with_imp = rng.random(k) < 0.9  # some clients log engagements without the impression id
    impressions = pa.table(
        {
            "impression_id": pa.array(imp_ids, pa.string()),
            "request_id": pa.array([f"req-{chunk:05d}-{r:07d}" for r in s["req"]], pa.string()),
            "viewer_id": pa.array(w.user_ids[s["viewer"]]),
            "post_id": pa.array(w.post_ids[s["post"]]),
            "served_at": _ts(s["t"]),
            "position": pa.array(s["pos"].astype(np.int32)),
        },
        schema=schema.IMPRESSIONS,
    )
    engagements = pa.table(
        {
            "event_id": pa.array([f"evt-{chunk:05d}-{i:08d}" for i in range(k)], pa.string()),
            "viewer_id": pa.array(w.user_ids[s["viewer"][ev["idx"]]]),
            "post_id": pa.array(w.post_ids[s["post"][ev["idx"]]]),
            "impression_id": pa.array(np.where(with_imp, imp_ids[ev["idx"]], None), pa.string()),
            "type": pa.array(ev["type"], pa.string()),
            "at": _ts(ev["at"]),
            "dwell_ms": pa.array(ev["dwell"].astype(np.int32), mask=ev["dwell"] < 0),
        },
        schema=schema.ENGAGEMENTS,
    )
    root, part = Path(out), f"{chunk:05d}"
    write_by_date(impressions, root / "raw" / "impressions", "served_at", part)
    write_by_date(engagements, root / "raw" / "engagements", "at", part)
    write_by_date(_truth_table(truth, imp_ids, s["t"]), root / "truth", "served_at", part)
    return {"impressions": m, "engagements": k}


def _engagement_events(
    w: World, s: dict[str, np.ndarray], truth: dict[str, np.ndarray], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """What users did with each impression, drawn from the truth: a view with dwell (longer after a click),
    then each action that fired, a little later. Events on deleted posts are dropped; ordered by time.
    Returns impression index, type, time (s) and dwell (ms, -1 unless a view) per event."""
    m = len(s["viewer"])
    clicked = rng.random(m) < truth["p_click"]
    dwell = np.exp(truth["mu"] + DWELL_SIGMA * rng.standard_normal(m)) * np.where(
        clicked, CLICK_DWELL_FACTOR, 1
    )
    dwell = np.minimum(np.round(dwell), schema.MAX_DWELL_MS - 1).astype(np.int64)  # (M,) ms
    view_at = s["t"] + s["pos"] * 2.5 + rng.random(m) * 2  # (M,) seconds
    events: list[tuple[np.ndarray, str, np.ndarray, np.ndarray | None]] = [
        (np.arange(m), "view", view_at, dwell)
    ]
    for name, fired in (  # every action's draw happens before the loop's timing draws
        ("click", clicked),
        ("like", rng.random(m) < truth["p_like"]),
        ("comment", rng.random(m) < truth["p_comment"]),
        ("share", rng.random(m) < truth["p_share"]),
        ("hide", rng.random(m) < truth["p_hide"]),
        ("report", rng.random(m) < truth["p_report"]),
    ):
        idx = np.flatnonzero(fired)
        at = view_at[idx] + 0.2 + dwell[idx] / 1000 * rng.uniform(0.1, 1.0, len(idx))
        events.append((idx, name, at, None))
    ev = {
        "idx": np.concatenate([e[0] for e in events]),
        "type": np.concatenate([np.full(len(e[0]), e[1], dtype=object) for e in events]),
        "at": np.concatenate([e[2] for e in events]),
        "dwell": np.concatenate([e[3] if e[3] is not None else np.full(len(e[0]), -1) for e in events]),
    }
    alive = w.post_deleted[s["post"][ev["idx"]]] > ev["at"]  # nobody engages with a post after its deletion
    order = np.argsort(ev["at"][alive], kind="stable")
    return {k: v[alive][order] for k, v in ev.items()}


def _truth_table(truth: dict[str, np.ndarray], imp_ids: np.ndarray, served_s: np.ndarray) -> pa.Table:
    """The hidden probabilities per impression (:data:`schema.TRUTH`): evaluation only."""
    return pa.table(
        {"impression_id": pa.array(imp_ids, pa.string())}
        | {
            f.name: pa.array(truth[f.name].astype(np.float32))
            for f in schema.TRUTH
            if f.name not in ("impression_id", "served_at")
        },
        schema=schema.TRUTH.remove(schema.TRUTH.get_field_index("served_at")),
    ).append_column("served_at", _ts(served_s))
