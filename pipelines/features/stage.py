"""The features stage: ``D/clean/`` → ``D/features/`` (training rows) + ``D/online/`` (the snapshot)."""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.common import schema
from pipelines.common.columns import DENSE_PREFIXES, LABELS, SPARSE_IDS, SPARSE_LISTS, SPARSE_VOCAB
from pipelines.common.config import FeaturesConfig
from pipelines.common.io import atomic_dir, write_json
from pipelines.features import pit
from pipelines.features.formulas import AGE_BUCKETS
from pipelines.features.online import build_online
from pipelines.features.rows import (
    assign_splits,
    build_rows,
    featurize_day,
    load_clean,
    make_catalog,
    make_vocab,
)
from pipelines.features.text import ENCODER_ID, FULL_DIM, Projection, embed_posts, text_hashes

log = logging.getLogger(__name__)


def run(cfg: FeaturesConfig, data_dir: Path) -> dict[str, Any]:
    """Build ``features/`` and ``online/`` from ``clean/``; returns the manifest."""
    import ray
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    t_start = time.perf_counter()
    clean = data_dir / "clean"
    tables = load_clean(clean)
    users, friendships, posts = tables["users"], tables["friendships"], tables["posts"]
    imp_hist, actions = tables["impressions"], tables["actions"]
    days = sorted(p.name.split("=", 1)[1] for p in (clean / "impressions").glob("date=*"))
    splits = assign_splits(days, cfg)
    vocab = make_vocab(users, posts)
    topic_vocab = vocab["topic"]
    h = pit.build_history(users, friendships, posts, imp_hist, actions, topic_vocab, vocab["city"])
    log.info(
        "history: %d impressions, %d actions, %d posts over %d day(s) (%.1f s)",
        imp_hist.num_rows,
        actions.num_rows,
        posts.num_rows,
        len(days),
        time.perf_counter() - t_start,
    )
    # Text embeddings: MiniLM in a Ray Data actor (only for posts not embedded by an earlier run), then PCA.
    t0 = time.perf_counter()
    posts_sorted = posts.take(pc.sort_indices(posts["post_id"]))
    full, n_encoded = embed_posts(posts_sorted, cfg, data_dir / "features" / "post_embeddings.parquet")
    projection = Projection.fit(full, cfg.text_dim, cfg.seed)
    text_emb = projection(full) if len(full) else np.zeros((0, cfg.text_dim), np.float32)
    encode_s = time.perf_counter() - t0
    cat = make_catalog(users, posts, vocab, text_emb)
    # Column order of every features file, decided once from a zero-row dry run.
    probe_df, probe_vec = build_rows(
        h,
        cat,
        schema.IMPRESSIONS.empty_table(),
        schema.ENGAGEMENTS.empty_table(),
        cfg,
    )
    dense_cols = [c for c in probe_df.columns if c.startswith(DENSE_PREFIXES)]
    id_cols = ["impression_id", "request_id", "viewer_id", "post_id", "author_id", "served_at", "position"]
    label_cols = [*LABELS[:-1], "dwell_ms", "skip"]
    sparse_cols = [*SPARSE_IDS, *SPARSE_VOCAB, *SPARSE_LISTS]
    scalar_columns = [*id_cols, "split", "sample_weight", *label_cols, *sparse_cols, *dense_cols]
    del probe_df
    out_root = data_dir / "features"
    with atomic_dir(out_root) as tmp:
        h_ref, cat_ref = ray.put(h), ray.put(cat)
        task = ray.remote(num_cpus=1)(featurize_day)
        pending = [
            task.remote(d, splits, str(clean), str(tmp), h_ref, cat_ref, cfg, scalar_columns) for d in days
        ]
        results = []
        log.info("features: %d day(s) as Ray tasks", len(pending))
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for r in ray.get(done):
                results.append(r)
                log.info("features: day %s (%s): %d rows", r["day"], r["split"], r["rows"])
        results.sort(key=lambda r: r["day"])
        # Train-split moments → standardization stats for the model.
        w = sum(r["moments"]["w"] for r in results if r["moments"])
        s = np.sum([r["moments"]["s"] for r in results if r["moments"]], axis=0)
        ss = np.sum([r["moments"]["ss"] for r in results if r["moments"]], axis=0)
        mean = s / max(w, 1e-9)
        std = np.sqrt(np.maximum(ss / max(w, 1e-9) - mean**2, 0))
        stats = {
            c: {"mean": float(m), "std": float(max(sd, 1e-6))}
            for c, m, sd in zip(dense_cols, mean, std, strict=True)
        }
        write_json(tmp / "stats.json", stats)
        write_json(tmp / "vocab.json", vocab)
        projection.save(tmp / "text_pca.npz")
        pq.write_table(
            pa.table(
                {
                    "post_id": posts_sorted["post_id"],
                    "text_emb": pa.FixedSizeListArray.from_arrays(
                        pa.array(text_emb.reshape(-1)), cfg.text_dim
                    ),
                    "text_hash": pa.array(text_hashes(posts_sorted)),
                    "text_emb_full": pa.FixedSizeListArray.from_arrays(pa.array(full.reshape(-1)), FULL_DIM),
                }
            ),
            tmp / "post_embeddings.parquet",
        )
        split_rows: dict[str, dict[str, Any]] = {}
        for r in results:
            sr = split_rows.setdefault(
                r["split"], {"days": [], "rows": 0, "impressions": 0, "weight": 0.0, "positives": {}}
            )
            sr["days"].append(r["day"])
            sr["rows"] += r["rows"]
            sr["impressions"] += r["impressions"]
            sr["weight"] += r["weight"]
            for k, v in r["weighted_positives"].items():
                sr["positives"][k] = sr["positives"].get(k, 0.0) + v
        manifest: dict[str, Any] = {
            "created_at": dt.datetime.now(dt.UTC).isoformat(),
            "config": cfg.model_dump(mode="json"),
            "columns": {
                "ids": id_cols,
                "labels": label_cols,
                "weight": "sample_weight",
                "sparse_ids": list(SPARSE_IDS),
                "sparse_vocab": {c: _vocab_size(c, vocab) for c in SPARSE_VOCAB},
                "sparse_lists": {"sp_topics": len(topic_vocab) + 1},
                "dense": dense_cols,
                "vectors": {k: int(m.shape[1]) for k, m in probe_vec.items()},
            },
            "splits": split_rows,
            "bias_features": ["ctx_position"],
            "text_encoder": {
                "model": ENCODER_ID,
                "posts_encoded": n_encoded,
                "posts_reused": len(full) - n_encoded,
            },
            "seconds": {"text_encoder": round(encode_s, 2), "total": round(time.perf_counter() - t_start, 2)},
        }
        write_json(tmp / "manifest.json", manifest)
    as_of_s = (
        int(max(h.pos_t.max(initial=0), h.post_created.max(initial=0), h.imps_by_post.t.max(initial=0))) + 1
    )
    with atomic_dir(data_dir / "online") as tmp_online:
        online_counts = build_online(
            h,
            cat,
            tables,
            as_of_s,
            cfg,
            tmp_online,
        )
        write_json(
            tmp_online / "manifest.json",
            {
                "as_of": dt.datetime.fromtimestamp(as_of_s + h.t0, dt.UTC).isoformat(),
                "rows": online_counts,
                "windows": cfg.windows,
                "features_dir": str(out_root),
            },
        )
    manifest["online"] = online_counts
    manifest["seconds"]["total"] = round(time.perf_counter() - t_start, 2)
    write_json(out_root / "manifest.json", manifest)
    return manifest


def _vocab_size(column: str, vocab: dict[str, dict[str, int]]) -> int:
    sizes = {
        "sp_city": len(vocab["city"]) + 1,
        "sp_author_city": len(vocab["city"]) + 1,
        "sp_gender": len(vocab["gender"]) + 1,
        "sp_age_bucket": len(AGE_BUCKETS) + 2,
        "sp_modality": len(vocab["modality"]) + 1,
    }
    return sizes[column]
