"""Serving-time feature rows: the ranker's input columns for (viewer, candidate posts, now), assembled from
the online store with the formulas of :mod:`pipelines.features.pit` /
:func:`pipelines.features.rows.build_rows`.

What depends on the request time is computed here (post age, tenure, friendship age, hours since the
last interaction, friends' engagement windows); the rest is the snapshot plus live counters. The
train/serve skew test (``tests/serving/test_features_skew.py``) builds an online snapshot as of a time
``T`` and checks these rows against the training rows of impressions served at ``T``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.batch import Jagged
from pipelines.features.formulas import AGE_BUCKETS
from pipelines.features.pit import (
    ACTIONS,
    ALL_TIME,
    NEVER,
    RATE_ACTIONS,
    TOPIC_PROFILES,
    counter_windows,
    rate,
    topic_cross,
)
from serve.store import OnlineStore

WEEK = 7 * 86400
#: Viewer and author scalars read from the snapshot as they are.
VIEWER_SCALARS = (
    "u_friends",
    "u_actions_7d",
    "u_impressions_7d",
    "u_action_rate",
    *(f"u_{a}_rate" for a in RATE_ACTIONS),
    "u_dwell_mean",
)
#: Author scalars of an author without events (``pit.author_features``'s priors); the rest are 0.
UNKNOWN_AUTHOR = {
    "a_action_rate": 0.1,
    **{f"a_{a}_rate": float(rate(np.zeros(1), np.zeros(1))[0]) for a in RATE_ACTIONS},
}
AUTHOR_SCALARS = (
    "a_posts_7d",
    "a_actions_7d",
    "a_friends",
    "a_action_rate",
    *(f"a_{a}_rate" for a in RATE_ACTIONS),
)
#: What ranking reads of a post (not its text or visibility).
POST_COLUMNS = (
    "author_id",
    "created_s",
    "modality_code",
    "modality_index",
    "topic_codes",
    "n_topics",
    "text_len",
    "media_duration_s",
    "p_text_emb",
    "p_media",
)


def _log1p(x: np.ndarray) -> np.ndarray:
    return np.log1p(np.maximum(x, 0)).astype(np.float32)


def assemble(store: OnlineStore, viewer: int, post_ids: np.ndarray, now_s: float) -> dict[str, Any]:
    """Model input columns (length N = len(post_ids)) plus ``author_id`` and a few explanation signals:
    the viewer's own columns (:func:`viewer_columns`, computed once and repeated), post, friends'
    engagement, author, affinity, relations, content."""
    n = len(post_ids)
    counters = [f"p_{what}_{w}" for w in counter_windows(store.windows) for what in ("impressions", *ACTIONS)]
    post = store.posts(post_ids, [*POST_COLUMNS, *counters])  # every column (N, ...)
    authors = post["author_id"]  # (N,) int64
    user = store.users(np.array([viewer], np.int64))  # every column (1, ...)
    auth = store.users(authors)  # every column (N, ...); found False for an unknown author
    codes, counts = post["topic_codes"], post["n_topics"]  # (N, T) int64, (N,) int64
    topics = codes[np.arange(codes.shape[1])[None, :] < counts[:, None]]  # (sum counts,) each row's, in order
    cols: dict[str, Any] = {
        k: np.repeat(v, n, axis=0) for k, v in viewer_columns(store, viewer, now_s, user).items()
    }
    cols.update(
        sp_author=authors.astype(np.int64),
        sp_post=np.asarray(post_ids, np.int64),
        sp_author_city=np.where(auth["found"], auth["city_code"], 0).astype(np.int64),
        sp_modality=post["modality_code"].astype(np.int64),
        sp_topics=Jagged(topics.astype(np.int64), counts.astype(np.int64)),
    )
    cols.update(post_state(post, counters, now_s))  # post: age now, counters, rates
    cols.update(friend_counters(store, viewer, post_ids, now_s))
    for k in AUTHOR_SCALARS:  # an author missing from the snapshot: what training gives one without events
        cols[k] = np.where(auth["found"], auth[k], UNKNOWN_AUTHOR.get(k, 0.0)).astype(np.float32)  # (N,)
    cols.update(_affinity(store.pairs(viewer, authors), now_s - store.as_of_s))
    cols.update(_relations(store, viewer, authors, user, auth, now_s))
    cols.update(_content(post, user, topics))
    cols["author_id"] = authors
    return cols


def post_state(post: dict[str, np.ndarray], counters: list[str], now_s: float) -> dict[str, np.ndarray]:
    """A post's state now, nothing about a viewer, from its store row: age, the engagement counters
    (counts → log1p) and the all-time rates, each (N,) float32."""
    cols = {"p_age_h": _log1p((now_s - post["created_s"]) / 3600)}
    for k in counters:
        cols[k] = _log1p(post[k])
    for a in RATE_ACTIONS:  # all-time rates from the live all-time counters
        cols[f"p_{a}_rate"] = rate(post[f"p_{a}_{ALL_TIME}"], post[f"p_impressions_{ALL_TIME}"])
    return cols


def post_state_columns(store: OnlineStore, post_ids: np.ndarray, now_s: float) -> dict[str, np.ndarray]:
    """:func:`post_state` of ``post_ids`` read from the store: what the retriever's prior reads, without
    assembling a viewer's feature rows (the index refreshes every indexed post's prior with it)."""
    counters = [f"p_{what}_{w}" for w in counter_windows(store.windows) for what in ("impressions", *ACTIONS)]
    return post_state(store.posts(post_ids, ["created_s", *counters]), counters, now_s)


def viewer_columns(
    store: OnlineStore, viewer: int, now_s: float, user: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """The viewer's own input columns, one row each (``(1, ...)``): the id and profile codes, activity
    scalars, tenure and age now, topic and modality shares. What the viewer tower reads, and what
    :func:`assemble` repeats over a request's candidates (``user``: the viewer's store row, when read
    already)."""
    user = store.users(np.array([viewer], np.int64)) if user is None else user
    age = int(user["age"][0])
    bucket = int(np.searchsorted(AGE_BUCKETS, age, side="right") + 1) if age > 0 else 0
    one = lambda x: np.array([x], np.float32)  # noqa: E731  # scalar → (1,) float32
    code = lambda x: np.array([int(x)], np.int64)  # noqa: E731  # code → (1,) int64 (0 = unknown)
    cols: dict[str, np.ndarray] = {
        "sp_viewer": code(viewer),
        "sp_city": code(user["city_code"][0]),
        "sp_gender": code(user["gender_code"][0]),
        "sp_school": code(user["school_code"][0]),
        "sp_work": code(user["work_code"][0]),
        "sp_age_bucket": code(bucket),
    }
    for k in VIEWER_SCALARS:
        cols[k] = one(user[k][0])
    cols["u_tenure_days"] = one(np.log1p(max(now_s - float(user["joined_s"][0]), 0) / 86400))
    cols["u_age"] = one(max(age, 0) / 100.0)
    cols["u_topic_share"] = np.asarray(user["u_topic_share"][:1], np.float32)  # (1, V)
    if "u_modality_share" in user:
        cols["u_modality_share"] = np.asarray(user["u_modality_share"][:1], np.float32)  # (1, M)
    return cols


def _affinity(pair: dict[str, np.ndarray], since_snapshot_s: float) -> dict[str, np.ndarray]:
    """Viewer–author history from the snapshot, each (N,) float32; hours since the last action aged by the
    time since the snapshot."""
    found = pair["found"]  # (N,) bool
    interacted = found & (pair["ua_has_interacted"] > 0)  # (N,) bool
    hours = np.expm1(pair["ua_last_action_h"].astype(np.float64)) + max(since_snapshot_s, 0) / 3600  # (N,)
    return {
        "ua_impressions": np.where(found, pair["ua_impressions"], 0).astype(np.float32),
        "ua_actions": np.where(found, pair["ua_actions"], 0).astype(np.float32),
        "ua_action_rate": np.where(found, pair["ua_action_rate"], 0.1).astype(np.float32),
        "ua_last_action_h": np.log1p(np.where(interacted, hours, NEVER)).astype(np.float32),
        "ua_has_interacted": interacted.astype(np.float32),
    }


def _relations(
    store: OnlineStore,
    viewer: int,
    authors: np.ndarray,
    user: dict[str, np.ndarray],
    auth: dict[str, np.ndarray],
    now_s: float,
) -> dict[str, np.ndarray]:
    """Viewer–author relations from the graph and the profiles, each (N,) float32."""
    n = len(authors)
    friend_ids, since = store.friends(viewer)  # (F,) int64 sorted, (F,) epoch seconds
    pos = np.minimum(np.searchsorted(friend_ids, authors), max(len(friend_ids) - 1, 0))  # (N,)
    is_friend = (len(friend_ids) > 0) & (friend_ids[pos] == authors) if len(friend_ids) else np.zeros(n, bool)
    f_since = np.where(is_friend, since[pos] if len(since) else 0.0, np.nan)  # (N,) NaN: not a friend
    is_friend = is_friend & (f_since < now_s)  # (N,) bool: friends before now

    def same(col: str) -> np.ndarray:
        v = user[col][0]
        return ((auth[col] == v) & (auth[col] >= 0) & (v >= 0) & auth["found"]).astype(np.float32)

    return {
        "rel_friend": is_friend.astype(np.float32),
        "rel_friend_days": np.log1p(np.where(is_friend, (now_s - f_since) / 86400, 0)).astype(np.float32),
        "rel_same_city": same("city_code"),
        "rel_classmates": same("school"),
        "rel_colleagues": same("work"),
    }


def _content(post: dict[str, np.ndarray], user: dict[str, np.ndarray], topics: np.ndarray) -> dict[str, Any]:
    """Viewer × post crosses and the post's content columns."""
    counts = post["n_topics"]  # (N,) int64
    n = len(counts)
    topic_share = user["u_topic_share"][0]  # (V,) float32, V = topic vocabulary
    multi_hot = np.zeros((n, len(topic_share)), np.float32)  # (N, V)
    multi_hot[np.repeat(np.arange(n), counts), np.clip(topics, 0, len(topic_share) - 1)] = 1.0
    n_topics = multi_hot.sum(1)  # (N,)
    cols: dict[str, Any] = {
        cross: topic_cross(user[profile][0][None, :], multi_hot) for profile, cross in TOPIC_PROFILES.items()
    }
    if "u_modality_share" in user:
        share = user["u_modality_share"][0]  # (M,) float32
        mod = post["modality_index"]  # (N,) int64, -1 = unknown
        cols["x_modality_match"] = np.where(mod >= 0, share[np.clip(mod, 0, len(share) - 1)], 0).astype(
            np.float32
        )
    cols["p_text_len"] = np.log1p(post["text_len"]).astype(np.float32)
    cols["p_media_duration"] = np.log1p(post["media_duration_s"]).astype(np.float32)
    cols["p_n_topics"] = n_topics.astype(np.float32)
    cols["p_text_emb"] = post["p_text_emb"]  # (N, E) float32
    cols["p_media"] = post["p_media"]  # (N, D) float32
    return cols


def friend_counters(
    store: OnlineStore, viewer: int, post_ids: np.ndarray, now_s: float
) -> dict[str, np.ndarray]:
    """Positive actions on each post by the viewer's friends (friends before the action's time)."""
    n = len(post_ids)
    out = {f"p_friend_actions_{name}": np.zeros(n, np.float32) for name in store.windows}
    rows, users, at = store.engagers(post_ids)
    friend_ids, since = store.friends(viewer)
    if len(rows) == 0 or len(friend_ids) == 0:
        return out
    pos = np.minimum(np.searchsorted(friend_ids, users), len(friend_ids) - 1)
    is_friend = (friend_ids[pos] == users) & (since[pos] < now_s) & (at < now_s)
    for name, w in store.windows.items():
        hit = is_friend & (at >= now_s - w)
        out[f"p_friend_actions_{name}"] = np.log1p(np.bincount(rows[hit], minlength=n)).astype(np.float32)
    return out
