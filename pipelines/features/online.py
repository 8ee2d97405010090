"""The online snapshot: the same point-in-time features as of the last event, written to ``D/online/``
for serving (:mod:`serve.store` reads it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.common import schema
from pipelines.common.config import FeaturesConfig
from pipelines.features import pit
from pipelines.features.formulas import WEEK
from pipelines.features.rows import Catalog


# ------------------------------------------------------------------------------------------- online store
def build_online(
    h: pit.History, cat: Catalog, tables: dict[str, pa.Table], as_of_s: int, cfg: FeaturesConfig, out: Path
) -> dict[str, int]:
    """Latest feature values per user, post, author and user–author pair, as serving reads them; returns
    the row count of each file."""
    out.mkdir(parents=True, exist_ok=True)
    written = {
        "users": online_users(h, cat, tables["users"], as_of_s),
        "posts": online_posts(h, cat, tables["posts"], as_of_s, cfg.windows),
        "user_author": online_pairs(h, as_of_s),
        "recent_actions": recent_actions(h, as_of_s),
        "viewer_events": recent_viewer_events(
            tables["impressions"], tables["actions"], (as_of_s + h.t0) * 1000
        ),
    }
    for name, table in written.items():
        pq.write_table(table, out / f"{name}.parquet")
    pq.write_table(tables["friendships"], out / "friendships.parquet")
    pq.write_table(tables["blocks"], out / "blocks.parquet")
    return {name: table.num_rows for name, table in written.items()}


def _vectors(mat: np.ndarray) -> pa.FixedSizeListArray:
    """(N, D) float matrix → an Arrow column of N fixed-size lists."""
    return pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1)), mat.shape[1])


def online_users(h: pit.History, cat: Catalog, users: pa.Table, as_of_s: int) -> pa.Table:
    """Profiles in user-id order with viewer and author features as of ``as_of_s``."""
    n_u = len(h.users)
    uc, tu = np.arange(n_u), np.full(n_u, as_of_s, np.int64)  # (U,) codes, (U,) query times
    user_feats = pit.user_features(h, uc, tu, WEEK)
    profiles = {k: user_feats.pop(k) for k in (*pit.TOPIC_PROFILES, "u_modality_share")}  # (U, T) …, (U, M)
    u = users.take(pa.array(np.argsort(users["user_id"].to_numpy())))
    for k, col in {**user_feats, **pit.author_features(h, uc, tu, WEEK)}.items():
        u = u.append_column(k, pa.array(col.astype(np.float32)))
    for k, mat in profiles.items():
        u = u.append_column(k, _vectors(mat))
    codes = {
        "city_code": h.user_city,
        "gender_code": cat.user_gender,
        "school_code": cat.user_school,
        "work_code": cat.user_work,
    }
    for k, col in codes.items():
        u = u.append_column(k, pa.array(col))
    return u


def online_posts(
    h: pit.History, cat: Catalog, posts: pa.Table, as_of_s: int, windows: dict[str, int]
) -> pa.Table:
    """Posts in post-id order with their counters as of ``as_of_s`` and what ranking reads of them."""
    n_p = len(h.posts)
    posts = posts.take(pa.array(np.argsort(posts["post_id"].to_numpy())))
    post_feats = pit.post_features(h, np.arange(n_p), np.full(n_p, as_of_s, np.int64), windows)
    post_feats.pop("p_age_h")  # depends on request time: serving computes it from created_at
    for k in pit.POST_RATES:  # serving computes them from the live all-time counters
        post_feats.pop(k)
    for k, col in post_feats.items():
        posts = posts.append_column(k, pa.array(col.astype(np.float32)))
    return (
        posts.append_column("modality_code", pa.array(cat.post_modality))
        .append_column("topic_codes", cat.post_topic_codes)
        .append_column("p_text_emb", _vectors(cat.post_text_emb))
        .append_column("p_media", _vectors(cat.post_media))
    )


def online_pairs(h: pit.History, as_of_s: int) -> pa.Table:
    """Viewer–author pairs with any history (impressions or actions) and their affinity features."""
    n_u = len(h.users)
    keys = np.unique(np.concatenate([h.imps_by_pair.combo // h.span, h.actions_by_pair.combo // h.span]))
    pv, pa_ = keys // n_u, keys % n_u  # (K,) viewer and author codes
    pair = pit.pair_features(h, pv, pa_, np.full(len(keys), as_of_s, np.int64))
    return pa.table(
        {"viewer_id": pa.array(h.users.ids[pv]), "author_id": pa.array(h.users.ids[pa_])}
        | {k: pa.array(c.astype(np.float32)) for k, c in pair.items()}
    )


def recent_actions(h: pit.History, as_of_s: int) -> pa.Table:
    """Positive actions of the last week (friends' engagement counters at serving)."""
    recent = h.pos_t >= as_of_s - WEEK
    return pa.table(
        {
            "post_id": pa.array(h.posts.ids[h.pos_post[recent]]),
            "user_id": pa.array(h.users.ids[h.pos_user[recent]]),
            "at": pa.array((h.pos_t[recent] + h.t0) * 1000).cast(schema.TS),
        }
    )


VIEWER_EVENTS = pa.schema(
    [
        pa.field("viewer_id", pa.int64()),
        pa.field("post_id", pa.int64()),
        pa.field("type", pa.string()),
        pa.field("at", schema.TS),
    ]
)


def recent_viewer_events(impressions: pa.Table, actions: pa.Table, as_of_ms: int) -> pa.Table:
    """What each viewer was shown (``type="impression"``) and hid or reported in the week before
    ``as_of_ms``: serving excludes hidden posts, demotes seen ones and applies "see fewer" fatigue."""
    lo = pa.scalar(as_of_ms - WEEK * 1000, schema.TS)
    hi = pa.scalar(as_of_ms, schema.TS)

    def window(t: pa.Table, column: str) -> pa.Table:
        at = pc.cast(t[column], schema.TS)
        return t.filter(pc.and_(pc.greater_equal(at, lo), pc.less(at, hi)))

    imps = window(impressions, "served_at")
    negatives = window(actions.filter(pc.is_in(actions["type"], pa.array(["hide", "report"]))), "at")
    return pa.table(
        {
            "viewer_id": pa.concat_arrays(
                [imps["viewer_id"].combine_chunks(), negatives["viewer_id"].combine_chunks()]
            ),
            "post_id": pa.concat_arrays(
                [imps["post_id"].combine_chunks(), negatives["post_id"].combine_chunks()]
            ),
            "type": pa.concat_arrays(
                [pa.array(["impression"] * imps.num_rows, pa.string()), negatives["type"].combine_chunks()]
            ),
            "at": pa.concat_arrays(
                [
                    pc.cast(imps["served_at"], schema.TS).combine_chunks(),
                    pc.cast(negatives["at"], schema.TS).combine_chunks(),
                ]
            ),
        },
        schema=VIEWER_EVENTS,
    )
