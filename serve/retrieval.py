"""Retrieval: the candidate posts of one feed request — friends' posts of the last N days, newest first,
capped at K (in-network), and the retriever's top posts by strangers (out-of-network, :func:`suggested`,
from :class:`serve.index.PostIndex`), both after the same visibility rules.

Visibility is absolute (:func:`visible` is the one definition; retrieval applies it vectorized and the
property tests check every returned post against it):

- a deleted post (any ``deleted_at``) is shown to nobody;
- nothing passes between two users when either blocked the other;
- a private post is shown only to its author;
- a friends-only post is shown only to the author's friends (and the author);
- a public post is shown to anyone (out-of-network retrieval returns public posts only);
- a post the viewer hid or reported never comes back; a post created after ``now`` does not exist yet,
  and one older than the window is not retrieved.

Posts already shown to the viewer are kept and flagged ``seen``; re-ranking demotes them below the unseen
ones by default, or drops them (``rerank.seen.mode: exclude``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field

from pipelines.common.config import StrictConfig
from serve.store import VISIBILITY_CODE, OnlineStore, ViewerState


class RetrievalConfig(StrictConfig, frozen=True):
    window_days: float = Field(7.0, gt=0, le=60, description="Posts from the last N days.")
    max_candidates: int = Field(2000, ge=1, le=20_000, description="Newest K friends' posts at most.")
    include_own_posts: bool = Field(False, description="Also retrieve the viewer's own recent posts.")
    out_of_network: int = Field(
        200,
        ge=0,
        le=5000,
        description="Public posts by non-friends from the retriever's index (feed-retriever@champion), by "
        "two-tower score; 0, or no registered retriever: friends' posts only.",
    )
    holdout_traffic: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Stable hash-fraction of users served friends' posts only (retrieval arm "
        "'friends_only', split independently of the model arms): the holdout of an online A/B of "
        "out-of-network retrieval.",
    )
    oversample: float = Field(
        3.0,
        ge=1,
        le=20,
        description="The index is asked for this many times out_of_network (rules drop some).",
    )
    index: Literal["flat", "hnsw"] = Field(
        "flat",
        description="flat: exact inner product (0.6 ms per query at 138k posts on one core, "
        "bench/RESULTS.md); hnsw: approximate, for corpora where exact search is too slow.",
    )
    placement: Literal["ingress", "deployment"] = Field(
        "ingress",
        description="ingress: the retriever and its index in each FeedIngress replica; deployment: in its "
        "own Retriever deployment behind a handle (ingress → retriever → ranker; an index too big to copy "
        "into every ingress replica, scaled apart).",
    )
    timeout_s: float = Field(
        0.25,
        gt=0,
        description="With placement deployment: the suggestions' budget; over it (or on an error) the feed "
        "is friends' posts only.",
    )
    retriever: str = Field("feed-retriever", description="Registered retriever name in MLflow.")
    retriever_alias: str = Field("champion", description="The retriever version served.")
    index_poll_s: float = Field(
        5.0, gt=0, le=3600, description="How often new posts are indexed and the alias re-resolved."
    )
    prior_refresh_s: float = Field(
        60.0,
        gt=0,
        le=86400,
        description="How often the indexed posts' priors (age, counters) are recomputed and the index "
        "rebuilt with them; suggestions are ranked with the priors of the last refresh.",
    )


@dataclass(slots=True)
class Candidates:
    """The retrieved posts of one feed request, and what the rules removed."""

    post_ids: np.ndarray  # (N,) int64: friends' newest first, then suggested by score
    seen: np.ndarray  # (N,) bool, shown to this viewer before
    considered: int = 0  # posts in the window, before the rules
    dropped: dict[str, int] = field(default_factory=dict)  # rule → posts it removed
    viewer: ViewerState | None = None  # what the viewer saw and hid (re-ranking's fatigue reads it too)
    suggested: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # (N,) bool: out-of-network
    retrieval_score: np.ndarray | None = None  # (N,) two-tower score where known (pre-ranking)

    def __post_init__(self) -> None:
        if len(self.suggested) != len(self.post_ids):  # not given: all in-network
            self.suggested = np.zeros(len(self.post_ids), bool)

    def take(self, index: np.ndarray) -> Candidates:
        """The candidates ``index`` (in that order)."""
        score = None if self.retrieval_score is None else self.retrieval_score[index]
        return Candidates(
            self.post_ids[index],
            self.seen[index],
            self.considered,
            self.dropped,
            self.viewer,
            self.suggested[index],
            score,
        )


def visible(
    viewer: int,
    author: int,
    visibility: str,
    deleted: bool,
    viewer_friends: set[int],
    blocked_with_viewer: set[int],
) -> bool:
    """The visibility rule for one (viewer, post)."""
    if deleted or author in blocked_with_viewer:
        return False
    if author == viewer:
        return True
    if visibility == "private":
        return False
    if visibility == "friends":
        return author in viewer_friends
    return visibility == "public"


def _rules(
    store: OnlineStore,
    viewer: int,
    ids: np.ndarray,
    now_s: float,
    window_s: float,
    friends: np.ndarray,
    blocked: np.ndarray,
    state: ViewerState,
) -> tuple[np.ndarray, dict[str, int], dict[str, np.ndarray]]:
    """Which of ``ids`` the viewer may see now (:func:`visible`, vectorized); how many each rule removed;
    the posts' columns it read (author, visibility code, deletion and creation times)."""
    post = store.posts(ids, ("author_id", "visibility_code", "deleted_s", "created_s"))
    author = post["author_id"]
    vis = post["visibility_code"]
    others = author != viewer
    n = len(ids)
    rules = {
        "unknown": ~post["found"],
        "deleted": ~np.isnan(post["deleted_s"]),
        "blocked": np.isin(author, blocked) if len(blocked) else np.zeros(n, bool),
        "private": (vis == VISIBILITY_CODE["private"]) & others,
        "friends_only": (vis == VISIBILITY_CODE["friends"]) & others & ~np.isin(author, friends),
        "unknown_visibility": vis < 0,
        "hidden": np.isin(ids, state.hidden) if len(state.hidden) else np.zeros(n, bool),
        "outside_window": (post["created_s"] >= now_s) | (post["created_s"] < now_s - window_s),
    }
    keep = np.ones(n, bool)
    dropped = {}
    for name, mask in rules.items():
        dropped[name] = int((keep & mask).sum())
        keep &= ~mask
    return keep, dropped, post


def retrieve(store: OnlineStore, viewer: int, now_s: float, cfg: RetrievalConfig) -> Candidates:
    """Friends' visible posts of the window, newest first, at most ``cfg.max_candidates``."""
    friends, since = store.friends(viewer)
    friends = friends[since < now_s]
    blocked = store.blocked_with(viewer)
    authors = np.setdiff1d(friends, blocked)
    if cfg.include_own_posts:
        authors = np.union1d(authors, np.array([viewer], np.int64))
    window = cfg.window_days * 86400
    ids = store.posts_by(authors, now_s - window, now_s)
    state = store.viewer(viewer)
    keep, dropped, _ = _rules(store, viewer, ids, now_s, window, friends, blocked, state)
    considered = len(ids)
    ids = ids[keep][: cfg.max_candidates]
    dropped["over_cap"] = int(keep.sum()) - len(ids)
    return Candidates(ids, np.isin(ids, state.seen), considered, dropped, state)


def suggested(
    store: OnlineStore,
    viewer: int,
    now_s: float,
    cfg: RetrievalConfig,
    index: Any,
    in_network: Candidates,
) -> Candidates:
    """Out-of-network candidates from ``index`` (a :class:`serve.index.PostIndex`): its top posts for the
    viewer's vector (``cfg.out_of_network`` after the rules, asked ``oversample`` times as many), public
    only, by nobody the viewer follows, blocks or is blocked by; ranked by the index's score (its priors
    as of the last refresh, every ``cfg.prior_refresh_s``)."""
    from serve.index import viewer_vector

    u = viewer_vector(index.retriever, store, viewer, now_s)
    ids, score = index.search(u, int(cfg.out_of_network * cfg.oversample))
    friends, since = store.friends(viewer)
    friends = friends[since < now_s]
    blocked = store.blocked_with(viewer)
    state = in_network.viewer if in_network.viewer is not None else store.viewer(viewer)
    keep, dropped, post = _rules(store, viewer, ids, now_s, cfg.window_days * 86400, friends, blocked, state)
    not_public = post["visibility_code"] != VISIBILITY_CODE["public"]
    in_net = np.isin(post["author_id"], friends) | (post["author_id"] == viewer)
    dropped["not_public"] = int((keep & not_public).sum())
    keep &= ~not_public
    dropped["in_network"] = int((keep & in_net).sum())
    keep &= ~in_net
    ids, score = ids[keep], score[keep]
    order = np.argsort(-score, kind="stable")[: cfg.out_of_network]
    ids, score = ids[order], score[order]
    return Candidates(
        ids,
        np.isin(ids, state.seen),
        len(keep),
        dropped,
        state,
        np.ones(len(ids), bool),
        score.astype(np.float64),
    )


def with_suggestions(
    store: OnlineStore,
    viewer: int,
    now_s: float,
    cfg: RetrievalConfig,
    max_candidates: int,
    index: Any,
    in_network: Candidates,
    suggest: bool = True,
    suggested_share: float = 0.5,
) -> Candidates:
    """What the ranker scores: friends' posts (``in_network``, newest first) and, with ``suggest``, the
    index's suggestions (``cfg.out_of_network``), pre-ranked to ``max_candidates`` by two-tower score when
    more (:func:`serve.index.prerank`; suggestions take the room of the weakest friends' posts, at most
    ``suggested_share`` of the budget while friends' posts fill the rest). Without an
    index (None: no retriever loaded) the newest ``max_candidates`` friends' posts. The same step wherever
    the index lives: in the ingress replica or in the Retriever deployment (``retrieval.placement``), and
    for both retrieval arms (the holdout passes ``suggest=False``, so both get the same budget)."""
    from serve.index import prerank

    if index is None:
        return in_network.take(np.arange(min(len(in_network.post_ids), max_candidates)))
    cands = in_network
    if suggest and cfg.out_of_network > 0:
        cands = merge(cands, suggested(store, viewer, now_s, cfg, index, cands))
    if len(cands.post_ids) > max_candidates:
        cands = prerank(store, viewer, now_s, index, cands, max_candidates, suggested_share)
    return cands


def merge(in_network: Candidates, out_of_network: Candidates) -> Candidates:
    """Both candidate sets in one (friends' first); a post in both stays in-network."""
    extra = ~np.isin(out_of_network.post_ids, in_network.post_ids)
    oon = out_of_network.take(np.flatnonzero(extra))
    n_in = len(in_network.post_ids)
    score = np.full(n_in + len(oon.post_ids), np.nan)
    if in_network.retrieval_score is not None:
        score[:n_in] = in_network.retrieval_score
    if oon.retrieval_score is not None:
        score[n_in:] = oon.retrieval_score
    dropped = {**in_network.dropped, **{f"suggested_{k}": v for k, v in out_of_network.dropped.items()}}
    return Candidates(
        np.concatenate([in_network.post_ids, oon.post_ids]),
        np.concatenate([in_network.seen, oon.seen]),
        in_network.considered + out_of_network.considered,
        dropped,
        in_network.viewer,
        np.concatenate([in_network.suggested, oon.suggested]),
        score,
    )
