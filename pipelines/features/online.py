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
    """Latest feature values per user, post, author and user–author pair, as serving reads them."""
    out.mkdir(parents=True, exist_ok=True)
    n_u, n_p = len(h.users), len(h.posts)
    uc = np.arange(n_u)
    tu = np.full(n_u, as_of_s, np.int64)
    users = tables["users"]
    u_order = np.argsort(users["user_id"].to_numpy())
    user_feats = pit.user_features(h, uc, tu, WEEK)
    profiles = {k: user_feats.pop(k) for k in ("u_topic_share", "u_modality_share")}
    u = users.take(pa.array(u_order))
    for k, col in user_feats.items():
        u = u.append_column(k, pa.array(col.astype(np.float32)))
    for k, mat in profiles.items():
        u = u.append_column(k, pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1)), mat.shape[1]))
    for k, col in pit.author_features(h, uc, tu, WEEK).items():
        u = u.append_column(k, pa.array(col.astype(np.float32)))
    u = u.append_column("city_code", pa.array(h.user_city)).append_column(
        "gender_code", pa.array(cat.user_gender)
    )
    pq.write_table(u, out / "users.parquet")
    posts = tables["posts"].take(pa.array(np.argsort(tables["posts"]["post_id"].to_numpy())))
    pc_ = np.arange(n_p)
    tp = np.full(n_p, as_of_s, np.int64)
    post_feats = pit.post_features(h, pc_, tp, cfg.windows)
    post_feats.pop("p_age_h")  # depends on request time: serving computes it from created_at
    for k, col in post_feats.items():
        posts = posts.append_column(k, pa.array(col.astype(np.float32)))
    posts = (
        posts.append_column("modality_code", pa.array(cat.post_modality))
        .append_column("topic_codes", cat.post_topic_codes)
        .append_column(
            "p_text_emb",
            pa.FixedSizeListArray.from_arrays(
                pa.array(cat.post_text_emb.reshape(-1)), cat.post_text_emb.shape[1]
            ),
        )
        .append_column(
            "p_media",
            pa.FixedSizeListArray.from_arrays(pa.array(cat.post_media.reshape(-1)), cat.post_media.shape[1]),
        )
    )
    pq.write_table(posts, out / "posts.parquet")
    # Pairs with any history: impressions or actions between viewer and author.
    keys = np.unique(np.concatenate([h.imps_by_pair.combo // h.span, h.actions_by_pair.combo // h.span]))
    pv, pa_ = keys // n_u, keys % n_u
    pair = pit.pair_features(h, pv, pa_, np.full(len(keys), as_of_s, np.int64))
    pairs = pa.table(
        {"viewer_id": pa.array(h.users.ids[pv]), "author_id": pa.array(h.users.ids[pa_])}
        | {k: pa.array(c.astype(np.float32)) for k, c in pair.items()}
    )
    pq.write_table(pairs, out / "user_author.parquet")
    pq.write_table(tables["friendships"], out / "friendships.parquet")
    pq.write_table(tables["blocks"], out / "blocks.parquet")
    recent = h.pos_t >= as_of_s - WEEK
    pq.write_table(
        pa.table(
            {
                "post_id": pa.array(h.posts.ids[h.pos_post[recent]]),
                "user_id": pa.array(h.users.ids[h.pos_user[recent]]),
                "at": pa.array((h.pos_t[recent] + h.t0) * 1000).cast(schema.TS),
            }
        ),
        out / "recent_actions.parquet",
    )
    viewer_events = recent_viewer_events(tables["impressions"], tables["actions"], (as_of_s + h.t0) * 1000)
    pq.write_table(viewer_events, out / "viewer_events.parquet")
    return {
        "users": u.num_rows,
        "posts": posts.num_rows,
        "user_author": pairs.num_rows,
        "recent_actions": int(recent.sum()),
        "viewer_events": viewer_events.num_rows,
    }


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
