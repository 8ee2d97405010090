"""Point-in-time feature computation: every value for a query ``(viewer, post, t)`` sees only events
strictly before ``t``.

The same functions build training rows (``t`` = each impression's ``served_at``) and the online snapshot
(``t`` = the snapshot time), so training and serving cannot drift apart.

The core is :class:`EventIndex`: events sorted by ``(key, time)`` packed into one int64, so a window count
for a million queries is two ``np.searchsorted`` calls::

    combo = key * SPAN + t           (t in whole seconds since History.t0)
    count(k, [t - w, t)) = searchsorted(combo, k*SPAN + t) - searchsorted(combo, k*SPAN + t - w)

Times are whole seconds, and "before" means an earlier second: an event in the same second as the query
is never counted, so rounding can hide an event but never leak one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.common import schema

ACTIONS = schema.ACTION_TYPES
ACTION_CODE = {a: i for i, a in enumerate(ACTIONS)}
POSITIVE_ACTIONS = ("click", "like", "comment", "share")
NEVER = 10_000.0  # hours: "no interaction yet"


class Codes:
    """Dense codes ``0..n-1`` for sorted int64 ids; unknown ids map to ``-1``."""

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = np.unique(np.asarray(ids, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.ids)

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if len(self.ids) == 0:
            return np.full(len(ids), -1, np.int64)
        pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return np.where(self.ids[pos] == ids, pos, -1).astype(np.int64)


class EventIndex:
    """Events keyed by a non-negative int, answering "how many / how much / when last, before ``t``"."""

    def __init__(self, keys: np.ndarray, t: np.ndarray, span: int, values: np.ndarray | None = None) -> None:
        keys = np.asarray(keys, dtype=np.int64)
        t = np.asarray(t, dtype=np.int64)
        ok = keys >= 0
        combo = keys[ok] * span + t[ok]
        order = np.argsort(combo, kind="stable")
        self.span = span
        self.combo = combo[order]
        self.t = t[ok][order]
        self.cum: np.ndarray | None = None
        if values is not None:
            v = np.asarray(values, dtype=np.float64)[ok][order]
            zero = np.zeros((1, *v.shape[1:]))
            self.cum = np.concatenate([zero, np.cumsum(v, axis=0)])

    def _bounds(self, keys: np.ndarray, t: np.ndarray, window: int | None) -> tuple[np.ndarray, np.ndarray]:
        keys = np.asarray(keys, dtype=np.int64)
        t = np.asarray(t, dtype=np.int64)
        base = np.where(keys >= 0, keys, 0) * self.span
        hi = np.searchsorted(self.combo, base + t, side="left")
        start = base if window is None else base + np.maximum(t - window, 0)
        lo = np.searchsorted(self.combo, start, side="left")
        hi = np.where(keys >= 0, hi, lo)
        return lo, hi

    def count(self, keys: np.ndarray, t: np.ndarray, window: int | None = None) -> np.ndarray:
        """Events of each key in ``[t - window, t)`` (all before ``t`` when ``window`` is None)."""
        lo, hi = self._bounds(keys, t, window)
        return (hi - lo).astype(np.float32)

    def total(self, keys: np.ndarray, t: np.ndarray, window: int | None = None) -> np.ndarray:
        """Sum of the event values (vectors allowed) of each key in the window."""
        assert self.cum is not None, "EventIndex built without values"
        lo, hi = self._bounds(keys, t, window)
        return np.asarray(self.cum[hi] - self.cum[lo], dtype=np.float32)

    def last(self, keys: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Time of the key's latest event before ``t``; ``-1`` when there is none."""
        lo, hi = self._bounds(keys, t, None)
        if len(self.t) == 0:
            return np.full(len(lo), -1, np.int64)
        return np.where(hi > lo, self.t[np.maximum(hi - 1, 0)], -1)


@dataclass
class History:
    """Every event the features may look at, as compact arrays (built once, shared with Ray tasks).

    Times are int64 seconds since ``t0``. Users and posts are dense codes (see :class:`Codes`).
    """

    t0: int
    span: int
    users: Codes
    posts: Codes
    n_topics: int
    post_author: np.ndarray  # (P,) user code
    post_created: np.ndarray  # (P,) seconds
    post_topics: np.ndarray  # (P, T) multi-hot
    post_modality: np.ndarray  # (P,) index into schema.MODALITIES, -1 unknown
    user_city: np.ndarray  # (U,) vocab code
    user_school: np.ndarray  # (U,) int code, -1 unknown
    user_work: np.ndarray  # (U,) int code, -1 unknown
    user_joined: np.ndarray  # (U,) seconds
    friend_keys: np.ndarray  # sorted a*U+b, both directions
    friend_since: np.ndarray  # aligned with friend_keys
    friends_of: EventIndex  # key user: friendships by creation time
    posts_by_author: EventIndex
    actions_by_post_type: EventIndex  # key post*8+action
    actions_by_viewer: EventIndex  # values: topic multi-hot, then modality one-hot, of the post
    actions_by_viewer_type: EventIndex  # key viewer*8+action
    actions_by_author_type: EventIndex  # key author*8+action
    positives_by_viewer: EventIndex  # click/like/comment/share; values: the post's topic multi-hot
    views_by_viewer: EventIndex  # values: topics × log dwell, topics, log dwell, 1 (see view_values)
    actions_by_author: EventIndex
    actions_by_pair: EventIndex  # key viewer*U+author
    imps_by_post: EventIndex
    imps_by_viewer: EventIndex  # values: the post's topic multi-hot (exposure per topic)
    imps_by_author: EventIndex
    imps_by_pair: EventIndex
    # Positive actions (click/like/comment/share) sorted by post, for friend counters.
    pos_post: np.ndarray
    pos_user: np.ndarray
    pos_t: np.ndarray

    def seconds(self, ts: pa.Array | pa.ChunkedArray | np.ndarray) -> np.ndarray:
        """UTC timestamps (Arrow) or epoch milliseconds (numpy) as seconds since ``t0``."""
        if isinstance(ts, np.ndarray):
            ms = ts.astype(np.int64)
        else:
            ms = pc.cast(pc.cast(ts, schema.TS), pa.int64()).to_numpy(zero_copy_only=False)
        return ms // 1000 - self.t0

    def friendship(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Friendship start (seconds) for user-code pairs; ``-1`` where they are not friends."""
        keys = np.asarray(a, np.int64) * len(self.users) + np.asarray(b, np.int64)
        if len(self.friend_keys) == 0:
            return np.full(len(keys), -1, np.int64)
        pos = np.minimum(np.searchsorted(self.friend_keys, keys), len(self.friend_keys) - 1)
        hit = (self.friend_keys[pos] == keys) & (np.asarray(a) >= 0) & (np.asarray(b) >= 0)
        return np.where(hit, self.friend_since[pos], -1)


def build_history(
    users: pa.Table,
    friendships: pa.Table,
    posts: pa.Table,
    impressions: pa.Table,
    actions: pa.Table,
    topic_vocab: dict[str, int],
    city_vocab: dict[str, int],
    views: pa.Table | None = None,
) -> History:
    """Index the clean tables. ``impressions`` needs viewer_id, post_id, served_at; ``actions`` is the
    engagements without views (viewer_id, post_id, type, at); ``views`` the view engagements (viewer_id,
    post_id, at, dwell_ms), none when absent."""
    t0, span = _clock(
        users["joined_at"],
        friendships["created_at"],
        posts["created_at"],
        impressions["served_at"],
        actions["at"],
    )
    users_c = Codes(users["user_id"].to_numpy())  # U codes
    posts_c = Codes(posts["post_id"].to_numpy())  # P codes
    n_u, n_t = len(users_c), len(topic_vocab) + 1

    def secs(col: pa.ChunkedArray) -> np.ndarray:
        return pc.cast(pc.cast(col, schema.TS), pa.int64()).to_numpy(zero_copy_only=False) // 1000 - t0

    # Users, aligned with their codes: (U,) each.
    u_order = np.argsort(users["user_id"].to_numpy())
    city = np.array([city_vocab.get(c, 0) if c else 0 for c in users["city"].to_pylist()], np.int64)[u_order]
    school = _factorize(users["school"].to_pylist())[u_order]  # -1 unknown
    work = _factorize(users["work"].to_pylist())[u_order]  # -1 unknown
    joined = secs(users["joined_at"])[u_order]
    # Posts, aligned with their codes: (P,), topics (P, T).
    p_order = np.argsort(posts["post_id"].to_numpy())
    author = users_c(posts["author_id"].to_numpy())[p_order]  # user code, -1 unknown
    created = secs(posts["created_at"])[p_order]
    topics = topic_multi_hot(posts["topics"], topic_vocab)[p_order]
    mod_code = {m: i for i, m in enumerate(schema.MODALITIES)}
    modality = np.array([mod_code.get(m, -1) for m in posts["modality"].to_pylist()], np.int64)[p_order]
    # Friendships, both directions.
    fa, fb = users_c(friendships["user_a"].to_numpy()), users_c(friendships["user_b"].to_numpy())
    fs = secs(friendships["created_at"])
    src, dst, since = np.concatenate([fa, fb]), np.concatenate([fb, fa]), np.concatenate([fs, fs])  # (2F,)
    fkeys = src * n_u + dst  # (2F,) a*U+b
    order = np.argsort(fkeys)
    # Impressions: (I,) viewer, post, author codes (-1 unknown) and seconds.
    iv = users_c(impressions["viewer_id"].to_numpy())
    ip = posts_c(impressions["post_id"].to_numpy())
    ia = np.where(ip >= 0, author[np.maximum(ip, 0)], -1)
    it = secs(impressions["served_at"])
    # Actions: (A,) viewer, post, author codes, seconds, action code; values (A, T + M).
    av = users_c(actions["viewer_id"].to_numpy())
    ap = posts_c(actions["post_id"].to_numpy())
    aa = np.where(ap >= 0, author[np.maximum(ap, 0)], -1)
    at = secs(actions["at"])
    atype = np.array([ACTION_CODE.get(x, -1) for x in actions["type"].to_pylist()], np.int64)
    a_mod = modality[np.maximum(ap, 0)]  # (A,)
    a_modality = (a_mod[:, None] == np.arange(len(schema.MODALITIES))[None, :]) & (ap >= 0)[:, None]  # (A, M)
    a_values = np.concatenate([topics[np.maximum(ap, 0)] * (ap >= 0)[:, None], a_modality], axis=1)
    positive = np.isin(atype, [ACTION_CODE[a] for a in POSITIVE_ACTIONS]) & (ap >= 0) & (av >= 0)  # (A,)
    # Views: (W,) viewer and post codes, seconds, dwell; values (W, 2T + 2).
    if views is None:
        wv = wp = wt = np.zeros(0, np.int64)
        dwell = np.zeros(0)
    else:
        wv, wp = users_c(views["viewer_id"].to_numpy()), posts_c(views["post_id"].to_numpy())
        wt, dwell = secs(views["at"]), pc.fill_null(views["dwell_ms"], 0).to_numpy(zero_copy_only=False)
    w_values = view_values(topics[np.maximum(wp, 0)] * (wp >= 0)[:, None], dwell)
    pos_order = np.lexsort((at[positive], ap[positive]))  # by post, then time
    return History(
        t0=t0,
        span=span,
        users=users_c,
        posts=posts_c,
        n_topics=n_t,
        post_author=author,
        post_created=created,
        post_topics=topics,
        post_modality=modality,
        user_city=city,
        user_school=school,
        user_work=work,
        user_joined=joined,
        friend_keys=fkeys[order],
        friend_since=since[order],
        friends_of=EventIndex(src, since, span),
        posts_by_author=EventIndex(author, created, span),
        actions_by_post_type=EventIndex(np.where((ap >= 0) & (atype >= 0), ap * 8 + atype, -1), at, span),
        actions_by_viewer=EventIndex(av, at, span, values=a_values),
        actions_by_viewer_type=EventIndex(np.where((av >= 0) & (atype >= 0), av * 8 + atype, -1), at, span),
        actions_by_author_type=EventIndex(np.where((aa >= 0) & (atype >= 0), aa * 8 + atype, -1), at, span),
        positives_by_viewer=EventIndex(
            np.where(positive, av, -1), at, span, values=topics[np.maximum(ap, 0)] * positive[:, None]
        ),
        views_by_viewer=EventIndex(wv, wt, span, values=w_values),
        actions_by_author=EventIndex(aa, at, span),
        actions_by_pair=EventIndex(np.where((av >= 0) & (aa >= 0), av * n_u + aa, -1), at, span),
        imps_by_post=EventIndex(ip, it, span),
        imps_by_viewer=EventIndex(iv, it, span, values=topics[np.maximum(ip, 0)] * (ip >= 0)[:, None]),
        imps_by_author=EventIndex(ia, it, span),
        imps_by_pair=EventIndex(np.where((iv >= 0) & (ia >= 0), iv * n_u + ia, -1), it, span),
        pos_post=ap[positive][pos_order],
        pos_user=av[positive][pos_order],
        pos_t=at[positive][pos_order],
    )


def view_values(post_topics: np.ndarray, dwell_ms: np.ndarray) -> np.ndarray:
    """What a view adds to its viewer's running totals: ``[topics × log dwell, topics, log dwell, 1]``,
    (W, 2T + 2), with log dwell = ``log1p(seconds)``."""
    ld = np.log1p(np.maximum(np.asarray(dwell_ms, np.float64), 0) / 1000.0)[:, None]  # (W, 1)
    return np.concatenate([post_topics * ld, post_topics, ld, np.ones_like(ld)], axis=1)


def _clock(*event_times: pa.ChunkedArray) -> tuple[int, int]:
    """``(t0, span)``: every event time is ``>= 1`` second after ``t0`` (negative values mean "none"), and
    ``span`` leaves room for queries up to ~a year after the data."""
    times = [pc.cast(c, schema.TS) for c in event_times if len(c)]
    t_min = min(pc.min(c).value for c in times) if times else 0
    t_max = max(pc.max(c).value for c in times) if times else 0
    t0 = int(t_min // 1000) - 1
    return t0, int(t_max // 1000) - t0 + 400 * 86400


def _factorize(values: list[str | None]) -> np.ndarray:
    codes, _ = pd.factorize(pd.Series(values, dtype=object), use_na_sentinel=True)
    return np.asarray(codes, dtype=np.int64)


def topic_multi_hot(topics: pa.ChunkedArray | pa.Array, vocab: dict[str, int]) -> np.ndarray:
    """(rows, len(vocab)+1) 0/1 matrix; column 0 is the out-of-vocabulary topic."""
    lists = topics.to_pylist()
    out = np.zeros((len(lists), len(vocab) + 1), dtype=np.float32)
    for i, ts in enumerate(lists):
        for tpc in ts or ():
            out[i, vocab.get(tpc, 0)] = 1.0
    return out


# ------------------------------------------------------------------------------------------- feature groups
RATE_PRIOR = (0.25, 5.0)  # rates start at 5% over 5 impressions: (n + 0.25) / (impressions + 5)
RATE_ACTIONS = ("click", "like", "comment", "share", "hide")
DWELL_PRIOR = (1.25, 2.0)  # mean log1p(dwell seconds) starts at 1.25 (~2.5 s) over 2 views
TOPIC_SHRINK = 5.0  # per-topic rates and dwell shrink to the viewer's own over this many events


def rate(n: np.ndarray, impressions: np.ndarray) -> np.ndarray:
    """Smoothed per-impression rate of ``n`` events (the prior keeps new users and authors finite)."""
    return ((n + RATE_PRIOR[0]) / (impressions + RATE_PRIOR[1])).astype(np.float32)


def user_features(h: History, v: np.ndarray, t: np.ndarray, week: int) -> dict[str, np.ndarray]:
    """Viewer activity as of ``t``, their rate of each action, how long they look, and their interests:
    topic and modality shares of what they engaged with, and per topic how much more than their own
    average they engage (``u_topic_lift``, positives per impression) and look (``u_topic_dwell``)."""
    acts = h.actions_by_viewer.count(v, t)
    imps = h.imps_by_viewer.count(v, t)
    totals = h.actions_by_viewer.total(v, t)
    topic_counts, mod_counts = totals[:, : h.n_topics], totals[:, h.n_topics :]
    topic_share = (topic_counts + 0.1) / (topic_counts.sum(1, keepdims=True) + 0.1 * h.n_topics)
    mod_share = (mod_counts + 1.0) / (mod_counts.sum(1, keepdims=True) + mod_counts.shape[1])
    joined = h.user_joined[np.maximum(v, 0)]
    out = {
        "u_friends": np.log1p(h.friends_of.count(v, t)),
        "u_actions_7d": np.log1p(h.actions_by_viewer.count(v, t, week)),
        "u_impressions_7d": np.log1p(h.imps_by_viewer.count(v, t, week)),
        "u_action_rate": ((acts + 0.5) / (imps + 5.0)).astype(np.float32),
        "u_tenure_days": np.log1p(np.maximum(t - joined, 0) / 86400).astype(np.float32),
        "u_topic_share": topic_share.astype(np.float32),
        "u_modality_share": mod_share.astype(np.float32),
    }
    for a in RATE_ACTIONS:
        keys = np.where(v >= 0, v * 8 + ACTION_CODE[a], -1)
        out[f"u_{a}_rate"] = rate(h.actions_by_viewer_type.count(keys, t), imps)
    # Positives per impression, per topic, against the viewer's own rate (log lift, shrunk to 0).
    k = TOPIC_SHRINK
    pos_t = h.positives_by_viewer.total(v, t).astype(np.float64)  # (N, T)
    imp_t = h.imps_by_viewer.total(v, t).astype(np.float64)  # (N, T)
    r = (pos_t.sum(1, keepdims=True) + RATE_PRIOR[0]) / (imps[:, None] + RATE_PRIOR[1])  # (N, 1)
    out["u_topic_lift"] = np.log((pos_t + k * r) / (imp_t + k) / r).astype(np.float32)
    # Log dwell: the viewer's mean, and per topic its excess over that mean (shrunk to 0).
    w = h.views_by_viewer.total(v, t).astype(np.float64)  # (N, 2T + 2)
    n_t = h.n_topics
    mean = (w[:, -2] + DWELL_PRIOR[0] * DWELL_PRIOR[1]) / (w[:, -1] + DWELL_PRIOR[1])  # (N,)
    out["u_dwell_mean"] = mean.astype(np.float32)
    topic_dwell = (w[:, :n_t] + k * mean[:, None]) / (w[:, n_t : 2 * n_t] + k) - mean[:, None]
    out["u_topic_dwell"] = topic_dwell.astype(np.float32)
    return out


#: Per-topic viewer profiles and the viewer × post cross each one gives (mean over the post's topics).
TOPIC_PROFILES = {
    "u_topic_share": "x_topic_match",
    "u_topic_lift": "x_topic_lift",
    "u_topic_dwell": "x_topic_dwell",
}


def topic_cross(profile: np.ndarray, post_topics: np.ndarray) -> np.ndarray:
    """(N, T) viewer profile × (N, T) post topic multi-hot → (N,) mean of the profile over the post's topics
    (0 for a post without topics)."""
    return ((profile * post_topics).sum(1) / np.maximum(post_topics.sum(1), 1)).astype(np.float32)


def cold_viewer(h: History) -> dict[str, float | list[float]]:
    """The viewer-history features of a viewer with no history yet (a new user): what training substitutes
    for a share of rows (``optim.history_dropout``) so the ranker learns to score new viewers, who in
    training are rare and in a growing network's test day are most. Profile features (age, city, friends)
    and the post's side are not history and stay as they are.

    The topic and modality crosses are constants here: a viewer without history has flat profiles."""
    none, zero = np.array([-1]), np.array([0])
    user = user_features(h, none, zero, 1)
    cold: dict[str, float | list[float]] = {}
    for k, col in user.items():
        if k in ("u_friends",):
            continue
        cold[k] = col[0].tolist() if col.ndim > 1 else float(col[0])
    cold["u_tenure_days"] = 0.0
    for k, col in pair_features(h, none, none, zero).items():
        if k.startswith("ua_"):
            cold[k] = float(col[0])
    one_topic = np.zeros((1, h.n_topics), np.float32)
    one_topic[0, -1] = 1.0
    for profile, cross in TOPIC_PROFILES.items():
        cold[cross] = float(topic_cross(user[profile], one_topic)[0])
    cold["x_modality_match"] = float(user["u_modality_share"][0, 0])
    return cold


#: The post counters' all-time window, beside the configured ``features.windows``: an item that recurs for
#: months or years (a film in a ratings log) keeps its popularity after the last 7-day window.
ALL_TIME = "all"
#: The post's all-time rate of each action per impression (computed from the all-time counters).
POST_RATES = tuple(f"p_{a}_rate" for a in RATE_ACTIONS)


def counter_windows(windows: dict[str, int]) -> tuple[str, ...]:
    """Names of every post counter window: the configured ones, then all time."""
    return (*windows, ALL_TIME)


def post_features(h: History, p: np.ndarray, t: np.ndarray, windows: dict[str, int]) -> dict[str, np.ndarray]:
    """Post age at ``t``, its engagement counters over each window and over all time (overall audience),
    and its all-time smoothed rate of each action per impression."""
    created = h.post_created[np.maximum(p, 0)]
    out: dict[str, np.ndarray] = {"p_age_h": np.log1p(np.maximum(t - created, 0) / 3600).astype(np.float32)}
    spans: dict[str, int | None] = {**windows, ALL_TIME: None}
    counts: dict[str, np.ndarray] = {}
    for name, w in spans.items():
        counts[f"p_impressions_{name}"] = h.imps_by_post.count(p, t, w)
        for a in ACTIONS:
            keys = np.where(p >= 0, p * 8 + ACTION_CODE[a], -1)
            counts[f"p_{a}_{name}"] = h.actions_by_post_type.count(keys, t, w)
    out.update({k: np.log1p(c) for k, c in counts.items()})
    for a in RATE_ACTIONS:
        out[f"p_{a}_rate"] = rate(counts[f"p_{a}_{ALL_TIME}"], counts[f"p_impressions_{ALL_TIME}"])
    return out


def author_features(h: History, a: np.ndarray, t: np.ndarray, week: int) -> dict[str, np.ndarray]:
    """Author activity (posting) and popularity (engagement received) as of ``t``."""
    acts = h.actions_by_author.count(a, t)
    imps = h.imps_by_author.count(a, t)
    out = {
        "a_posts_7d": np.log1p(h.posts_by_author.count(a, t, week)),
        "a_actions_7d": np.log1p(h.actions_by_author.count(a, t, week)),
        "a_friends": np.log1p(h.friends_of.count(a, t)),
        "a_action_rate": ((acts + 0.5) / (imps + 5.0)).astype(np.float32),
    }
    for action in RATE_ACTIONS:
        keys = np.where(a >= 0, a * 8 + ACTION_CODE[action], -1)
        out[f"a_{action}_rate"] = rate(h.actions_by_author_type.count(keys, t), imps)
    return out


def pair_features(h: History, v: np.ndarray, a: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
    """Viewer–author affinity as of ``t``: engagement share, recency, and relation flags."""
    n_u = len(h.users)
    keys = np.where((v >= 0) & (a >= 0), v * n_u + a, -1)
    acts = h.actions_by_pair.count(keys, t)
    imps = h.imps_by_pair.count(keys, t)
    last = h.actions_by_pair.last(keys, t)
    since = h.friendship(v, a)
    friend = (since >= 0) & (since < t)
    vv, aa = np.maximum(v, 0), np.maximum(a, 0)
    same = lambda col: ((col[vv] == col[aa]) & (col[vv] >= 0) & (v >= 0) & (a >= 0)).astype(np.float32)  # noqa: E731
    return {
        "ua_impressions": np.log1p(imps),
        "ua_actions": np.log1p(acts),
        "ua_action_rate": ((acts + 0.1) / (imps + 1.0)).astype(np.float32),
        "ua_last_action_h": np.log1p(np.where(last >= 0, (t - last) / 3600, NEVER)).astype(np.float32),
        "ua_has_interacted": (last >= 0).astype(np.float32),
        "rel_friend": friend.astype(np.float32),
        "rel_friend_days": np.log1p(np.where(friend, (t - since) / 86400, 0)).astype(np.float32),
        "rel_same_city": same(h.user_city),
        "rel_classmates": same(h.user_school),
        "rel_colleagues": same(h.user_work),
    }


def friend_counters(
    h: History, v: np.ndarray, p: np.ndarray, t: np.ndarray, windows: dict[str, int]
) -> dict[str, np.ndarray]:
    """Positive actions on the post by the viewer's friends (friends before ``t``) in each window."""
    n = len(v)
    out = {f"p_friend_actions_{name}": np.zeros(n, np.float32) for name in windows}
    if n == 0 or len(h.pos_post) == 0:
        return out
    lo = np.searchsorted(h.pos_post, p, side="left")
    hi = np.searchsorted(h.pos_post, p, side="right")
    lengths = np.where(p >= 0, hi - lo, 0)
    if lengths.sum() == 0:
        return out
    row = np.repeat(np.arange(n), lengths)
    idx = np.repeat(lo, lengths) + (
        np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    )
    engager, at = h.pos_user[idx], h.pos_t[idx]
    since = h.friendship(v[row], engager)
    qt = t[row]
    is_friend = (since >= 0) & (since < qt) & (at < qt)
    for name, w in windows.items():
        hit = is_friend & (at >= qt - w)
        out[f"p_friend_actions_{name}"] = np.log1p(np.bincount(row[hit], minlength=n)).astype(np.float32)
    return out
