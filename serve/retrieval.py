"""Retrieval: the candidate posts of one feed request — friends' posts of the last N days, newest first,
capped at K, after the visibility rules.

Visibility is absolute (:func:`visible` is the one definition; retrieval applies it vectorized and the
property tests check every returned post against it):

- a deleted post (any ``deleted_at``) is shown to nobody;
- nothing passes between two users when either blocked the other;
- a private post is shown only to its author;
- a friends-only post is shown only to the author's friends (and the author);
- a public post is shown to anyone (retrieval only looks at friends' posts anyway);
- a post the viewer hid or reported never comes back; a post created after ``now`` does not exist yet.

Posts already shown to the viewer are kept and flagged ``seen``; re-ranking demotes them below the unseen
ones by default, or drops them (``rerank.seen.mode: exclude``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydantic import Field

from pipelines.common.config import StrictConfig
from serve.store import VISIBILITY_CODE, OnlineStore, ViewerState


class RetrievalConfig(StrictConfig, frozen=True):
    window_days: float = Field(7.0, gt=0, le=60, description="Friends' posts from the last N days.")
    max_candidates: int = Field(2000, ge=1, le=20_000, description="Newest K candidates at most.")
    include_own_posts: bool = Field(False, description="Also retrieve the viewer's own recent posts.")


@dataclass(slots=True)
class Candidates:
    """The retrieved posts of one feed request, and what the rules removed."""

    post_ids: np.ndarray  # (N,) int64, newest first
    seen: np.ndarray  # (N,) bool, shown to this viewer before
    considered: int = 0  # posts by friends in the window, before the rules
    dropped: dict[str, int] = field(default_factory=dict)  # rule → posts it removed
    viewer: ViewerState | None = None  # what the viewer saw and hid (re-ranking's fatigue reads it too)


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


def retrieve(store: OnlineStore, viewer: int, now_s: float, cfg: RetrievalConfig) -> Candidates:
    friends, since = store.friends(viewer)
    friends = friends[since < now_s]
    blocked = store.blocked_with(viewer)
    authors = np.setdiff1d(friends, blocked)
    if cfg.include_own_posts:
        authors = np.union1d(authors, np.array([viewer], np.int64))
    ids = store.posts_by(authors, now_s - cfg.window_days * 86400, now_s)
    considered = len(ids)
    post = store.posts(ids, ("author_id", "visibility_code", "deleted_s"))
    author = post["author_id"]
    vis = post["visibility_code"]
    state = store.viewer(viewer)
    others = author != viewer
    rules = {
        "deleted": ~np.isnan(post["deleted_s"]),
        "blocked": np.isin(author, blocked) if len(blocked) else np.zeros(len(ids), bool),
        "private": (vis == VISIBILITY_CODE["private"]) & others,
        "friends_only": (vis == VISIBILITY_CODE["friends"]) & others & ~np.isin(author, friends),
        "unknown_visibility": vis < 0,
        "hidden": np.isin(ids, state.hidden) if len(state.hidden) else np.zeros(len(ids), bool),
    }
    keep = np.ones(len(ids), bool)
    dropped = {}
    for name, mask in rules.items():
        dropped[name] = int((keep & mask).sum())
        keep &= ~mask
    ids = ids[keep][: cfg.max_candidates]
    dropped["over_cap"] = int(keep.sum()) - len(ids)
    return Candidates(ids, np.isin(ids, state.seen), considered, dropped, state)
