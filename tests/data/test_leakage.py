"""Point-in-time correctness: events planted after an impression never change that impression's features.

The test rebuilds features for real impressions twice — from the clean logs, and from the clean logs plus
planted future events of every kind the features read (a friend's like on the same post, more
impressions of it, the viewer engaging with the author, a new friendship, a new post by the author) — and
requires identical feature values. It also queries just after the planted events, to prove the planted
events are ones the features do see.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest

from pipelines.features import pit
from pipelines.common import schema
from pipelines.common.config import FeaturesConfig
from pipelines.common.columns import DENSE_PREFIXES
from pipelines.features.rows import build_rows
from pipelines.features.rows import make_catalog
from pipelines.features.rows import make_vocab

pytestmark = pytest.mark.ray


def _clean(d: Path, name: str) -> pa.Table:
    return pads.dataset(str(d / "clean" / name), format="parquet", schema=schema.TABLES[name].schema).to_table()


def _features(tables: dict[str, pa.Table], imps: pa.Table) -> pd.DataFrame:
    vocab = make_vocab(tables["users"], tables["posts"])
    actions = tables["engagements"].filter(pc.not_equal(tables["engagements"]["type"], "view"))
    views = tables["engagements"].filter(pc.equal(tables["engagements"]["type"], "view"))
    h = pit.build_history(
        tables["users"], tables["friendships"], tables["posts"], tables["impressions"], actions,
        vocab["topic"], vocab["city"], views,
    )
    text_emb = np.zeros((tables["posts"].num_rows, 4), np.float32)
    cat = make_catalog(tables["users"], tables["posts"], vocab, text_emb)
    empty = tables["engagements"].slice(0, 0)
    df, vectors = build_rows(h, cat, imps, empty, FeaturesConfig())
    flat = [pd.DataFrame(mat, columns=[f"{name}_{j}" for j in range(mat.shape[1])]) for name, mat in vectors.items()]
    return pd.concat([df.reset_index(drop=True), *flat], axis=1)


def _ts(seconds: float) -> pa.Scalar:
    return pa.scalar(int(seconds * 1000), pa.int64()).cast(schema.TS)


def test_future_events_do_not_leak(built_world: Path) -> None:
    tables = {n: _clean(built_world, n) for n in ("users", "friendships", "posts", "impressions", "engagements")}
    imps = tables["impressions"]
    # A late impression whose post has an author with other posts and a viewer with friends.
    served = pc.cast(imps["served_at"], pa.int64()).to_numpy() / 1000
    target = int(np.argsort(served)[int(len(served) * 0.8)])
    row = imps.slice(target, 1).to_pylist()[0]
    t = row["served_at"].timestamp()
    viewer, post = row["viewer_id"], row["post_id"]
    posts = tables["posts"].to_pandas()
    author = int(posts.loc[posts["post_id"] == post, "author_id"].iloc[0])
    other_post = posts.loc[(posts["author_id"] == author) & (posts["post_id"] != post), "post_id"]
    fr = tables["friendships"].to_pandas()
    friends = set(fr.loc[fr["user_a"] == viewer, "user_b"]) | set(fr.loc[fr["user_b"] == viewer, "user_a"])
    friend = next(iter(friends - {author}))
    users = set(tables["users"]["user_id"].to_pylist())
    stranger = next(u for u in sorted(users) if u not in friends and u != viewer)

    def eng(event_id: str, user: int, p: int, kind: str, at: float, dwell: int | None = None) -> dict[str, object]:
        return {"event_id": event_id, "viewer_id": user, "post_id": p, "impression_id": None, "type": kind,
                "at": _ts(at).as_py(), "dwell_ms": dwell}

    planted = dict(tables)
    planted["engagements"] = pa.concat_tables([
        tables["engagements"],
        pa.Table.from_pylist(
            [
                eng("future-1", friend, post, "like", t + 1),
                eng("future-2", friend, post, "comment", t + 2),
                eng("future-3", viewer, int(other_post.iloc[0]) if len(other_post) else post, "share", t + 3),
                eng("future-4", stranger, post, "click", t + 4),
                eng("future-5", viewer, post, "view", t + 4, dwell=600_000),
                eng("future-6", viewer, post, "like", t + 4),
            ],
            schema=schema.ENGAGEMENTS,
        ),
    ])
    planted["impressions"] = pa.concat_tables([
        tables["impressions"],
        pa.Table.from_pylist(
            [{"impression_id": "future-imp", "request_id": "future-req", "viewer_id": viewer, "post_id": post,
              "served_at": _ts(t + 5).as_py(), "position": 0}],
            schema=schema.IMPRESSIONS,
        ),
    ])
    planted["friendships"] = pa.concat_tables([
        tables["friendships"],
        pa.Table.from_pylist(
            [{"user_a": min(viewer, stranger), "user_b": max(viewer, stranger), "created_at": _ts(t + 6).as_py()}],
            schema=schema.FRIENDSHIPS,
        ),
    ])
    new_post = dict(posts.loc[posts["post_id"] == post].iloc[0])
    new_post.update(post_id=max(posts["post_id"]) + 1, created_at=_ts(t + 7).as_py(), deleted_at=None)
    new_post["media_vector"] = None if new_post["media_vector"] is None else list(new_post["media_vector"])
    new_post["topics"] = list(new_post["topics"])
    planted["posts"] = pa.concat_tables([tables["posts"], pa.Table.from_pylist([new_post], schema=schema.POSTS)])

    # Every impression served up to t (inclusive) must be unaffected.
    upto = imps.filter(pc.less_equal(imps["served_at"], row["served_at"]))
    base = _features(tables, upto)
    with_future = _features(planted, upto)
    feature_cols = [c for c in base.columns if c.startswith(DENSE_PREFIXES) or c.startswith("sp_")]
    pd.testing.assert_frame_equal(base[feature_cols], with_future[feature_cols])

    # Sanity: the same impression asked about after the planted events does see them.
    later = imps.slice(target, 1).set_column(
        imps.schema.get_field_index("served_at"), "served_at", pa.array([_ts(t + 60).as_py()], schema.TS)
    )
    a, b = _features(tables, later).iloc[0], _features(planted, later).iloc[0]
    assert b["p_friend_actions_1h"] > a["p_friend_actions_1h"]
    assert b["p_like_1h"] > a["p_like_1h"]
    assert b["p_impressions_1h"] > a["p_impressions_1h"]
    assert b["a_posts_7d"] > a["a_posts_7d"]
    assert b["u_friends"] > a["u_friends"]
    assert b["u_dwell_mean"] > a["u_dwell_mean"]  # the planted 10-minute view
    assert b["x_topic_dwell"] > a["x_topic_dwell"]
    assert b["u_like_rate"] > a["u_like_rate"]
