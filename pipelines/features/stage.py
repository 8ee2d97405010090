"""The features stage: ``D/clean/`` → ``D/features/`` (training rows) + ``D/online/`` (the snapshot).

:func:`run` reads as its steps: load the clean tables, index their history, embed post text, plan the
columns, featurize each day as a Ray task, then write the statistics, the manifest and the online snapshot.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.common import columns, schema
from pipelines.common.config import FeaturesConfig
from pipelines.common.io import atomic_dir, write_json
from pipelines.common.runtime import task_cpus
from pipelines.features import pit
from pipelines.features.formulas import AGE_BUCKETS
from pipelines.features.online import build_online
from pipelines.features.rows import (
    Catalog,
    Splits,
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
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    t_start = time.perf_counter()
    clean = data_dir / "clean"
    tables = load_clean(clean)
    days = sorted(p.name.split("=", 1)[1] for p in (clean / "impressions").glob("date=*"))
    served_ms = pc.cast(tables["impressions"]["served_at"], pa.int64()).to_numpy()
    splits = assign_splits(days, cfg, served_ms)
    vocab = make_vocab(tables["users"], tables["posts"])
    h = index_history(tables, vocab)
    log.info(
        "history: %d impressions, %d actions, %d posts over %d day(s) (%.1f s)",
        tables["impressions"].num_rows,
        tables["actions"].num_rows,
        tables["posts"].num_rows,
        len(days),
        time.perf_counter() - t_start,
    )
    text = embed_text(tables["posts"], cfg, data_dir / "features" / "post_embeddings.parquet")
    cat = make_catalog(tables["users"], tables["posts"], vocab, text.reduced)
    plan = plan_columns(h, cat, cfg, vocab)
    out_root = data_dir / "features"
    with atomic_dir(out_root) as tmp:
        days_done = featurize_days(days, splits, clean, tmp, h, cat, cfg, plan.scalar)
        write_json(tmp / "stats.json", dense_stats(days_done, plan.dense))
        write_json(tmp / "vocab.json", vocab)
        text.write(tmp)
        manifest = make_manifest(cfg, plan, days_done, text, t_start)
        manifest["split_by"] = splits.describe()
        # a log with no views at all (ratings) has no dwell: skip and dwell are then not learned
        manifest["dwell_logged"] = bool(tables["views"].num_rows)
        manifest["cold_viewer"] = pit.cold_viewer(h)
        write_json(tmp / "manifest.json", manifest)
    manifest["online"] = write_online(h, cat, tables, cfg, data_dir / "online", out_root)
    manifest["seconds"]["total"] = round(time.perf_counter() - t_start, 2)
    write_json(out_root / "manifest.json", manifest)
    return manifest


def index_history(tables: dict[str, pa.Table], vocab: dict[str, dict[str, int]]) -> pit.History:
    """Every event of the clean tables (:func:`pipelines.features.rows.load_clean`) in the point-in-time
    index."""
    return pit.build_history(
        tables["users"],
        tables["friendships"],
        tables["posts"],
        tables["impressions"],
        tables["actions"],
        vocab["topic"],
        vocab["city"],
        tables["views"],
    )


@dataclass
class TextEmbeddings:
    """Post text embeddings in post-id order: MiniLM's full vectors and their PCA projection."""

    posts: pa.Table  # posts sorted by post_id
    full: np.ndarray  # (P, 384) float32
    reduced: np.ndarray  # (P, text_dim) float32: what the ranker sees
    projection: Projection
    encoded: int  # posts encoded by this run (the rest came from the previous run's cache)
    seconds: float

    def write(self, out: Path) -> None:
        """``text_pca.npz`` (serving projects new posts with it) and ``post_embeddings.parquet`` (the next
        run's cache, keyed by text hash)."""
        self.projection.save(out / "text_pca.npz")
        dim = self.reduced.shape[1]
        table = pa.table(
            {
                "post_id": self.posts["post_id"],
                "text_emb": pa.FixedSizeListArray.from_arrays(pa.array(self.reduced.reshape(-1)), dim),
                "text_hash": pa.array(text_hashes(self.posts)),
                "text_emb_full": pa.FixedSizeListArray.from_arrays(pa.array(self.full.reshape(-1)), FULL_DIM),
            }
        )
        pq.write_table(table, out / "post_embeddings.parquet")


def embed_text(posts: pa.Table, cfg: FeaturesConfig, cache: Path) -> TextEmbeddings:
    """MiniLM in Ray Data actors (only posts the cache does not hold), then PCA to ``cfg.text_dim``."""
    t0 = time.perf_counter()
    posts_sorted = posts.take(pc.sort_indices(posts["post_id"]))
    full, encoded = embed_posts(posts_sorted, cfg, cache)
    projection = Projection.fit(full, cfg.text_dim, cfg.seed)
    reduced = projection(full) if len(full) else np.zeros((0, cfg.text_dim), np.float32)
    return TextEmbeddings(posts_sorted, full, reduced, projection, encoded, time.perf_counter() - t0)


@dataclass
class ColumnPlan:
    """The columns of every features file and their roles (:mod:`pipelines.common.columns`)."""

    dense: list[str]
    vectors: dict[str, int]  # name → length
    sparse_vocab: dict[str, int]  # name → vocabulary size (code 0 = unknown)
    sparse_lists: dict[str, int]

    @property
    def scalar(self) -> list[str]:
        """Every non-vector column, in file order."""
        return [
            *columns.IDS,
            columns.SPLIT,
            columns.WEIGHT,
            *columns.LABELS,
            *columns.SPARSE,
            *self.dense,
        ]


def plan_columns(
    h: pit.History, cat: Catalog, cfg: FeaturesConfig, vocab: dict[str, dict[str, int]]
) -> ColumnPlan:
    """Column order decided once, from a zero-row dry run of :func:`build_rows`."""
    probe, vectors = build_rows(
        h, cat, schema.IMPRESSIONS.empty_table(), schema.ENGAGEMENTS.empty_table(), cfg
    )
    sizes = {
        "sp_city": len(vocab["city"]) + 1,
        "sp_author_city": len(vocab["city"]) + 1,
        "sp_gender": len(vocab["gender"]) + 1,
        "sp_age_bucket": len(AGE_BUCKETS) + 2,
        "sp_modality": len(vocab["modality"]) + 1,
        "sp_school": len(vocab["school"]) + 1,
        "sp_work": len(vocab["work"]) + 1,
    }
    return ColumnPlan(
        dense=[c for c in probe.columns if c.startswith(columns.DENSE_PREFIXES)],
        vectors={k: int(m.shape[1]) for k, m in vectors.items()},
        sparse_vocab={c: sizes[c] for c in columns.SPARSE_VOCAB},
        sparse_lists={"sp_topics": len(vocab["topic"]) + 1},
    )


def featurize_days(
    days: list[str],
    splits: Splits,
    clean: Path,
    out: Path,
    h: pit.History,
    cat: Catalog,
    cfg: FeaturesConfig,
    scalar_columns: list[str],
) -> list[dict[str, Any]]:
    """One Ray task per served_at day (memory bounded by a day); their summaries in day order."""
    import ray

    h_ref, cat_ref = ray.put(h), ray.put(cat)
    task = ray.remote(num_cpus=task_cpus())(featurize_day)
    pending = [
        task.remote(d, splits, str(clean), str(out), h_ref, cat_ref, cfg, scalar_columns) for d in days
    ]
    log.info("features: %d day(s) as Ray tasks", len(pending))
    done_days = []
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for per_split in ray.get(done):
            for r in per_split:
                done_days.append(r)
                log.info("features: day %s (%s): %d rows", r["day"], r["split"], r["rows"])
    return sorted(done_days, key=lambda r: (r["day"], r["split"]))


def dense_stats(days_done: list[dict[str, Any]], dense: list[str]) -> dict[str, dict[str, float]]:
    """Weighted train-split mean and standard deviation per dense column (the model standardizes)."""
    moments = [r["moments"] for r in days_done if r["moments"]]
    w = sum(m["w"] for m in moments)
    s = np.sum([m["s"] for m in moments], axis=0)  # (n_dense,)
    ss = np.sum([m["ss"] for m in moments], axis=0)  # (n_dense,)
    mean = s / max(w, 1e-9)
    std = np.sqrt(np.maximum(ss / max(w, 1e-9) - mean**2, 0))
    return {
        c: {"mean": float(m), "std": float(max(sd, 1e-6))} for c, m, sd in zip(dense, mean, std, strict=True)
    }


def split_summary(days_done: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Days, rows, impressions, weight and weighted positives per split."""
    out: dict[str, dict[str, Any]] = {}
    for r in days_done:
        sr = out.setdefault(
            r["split"], {"days": [], "rows": 0, "impressions": 0, "weight": 0.0, "positives": {}}
        )
        sr["days"].append(r["day"])
        sr["rows"] += r["rows"]
        sr["impressions"] += r["impressions"]
        sr["weight"] += r["weight"]
        for k, v in r["weighted_positives"].items():
            sr["positives"][k] = sr["positives"].get(k, 0.0) + v
    return out


def make_manifest(
    cfg: FeaturesConfig,
    plan: ColumnPlan,
    days_done: list[dict[str, Any]],
    text: TextEmbeddings,
    t_start: float,
) -> dict[str, Any]:
    """``features/manifest.json``: every column by role, the splits, the text encoder, timings."""
    return {
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "config": cfg.model_dump(mode="json"),
        "columns": {
            "ids": list(columns.IDS),
            "labels": list(columns.LABELS),
            "weight": columns.WEIGHT,
            "sparse_ids": list(columns.SPARSE_IDS),
            "sparse_vocab": plan.sparse_vocab,
            "sparse_lists": plan.sparse_lists,
            "dense": plan.dense,
            "vectors": plan.vectors,
        },
        "splits": split_summary(days_done),
        "bias_features": list(columns.BIAS),
        "text_encoder": {
            "model": ENCODER_ID,
            "posts_encoded": text.encoded,
            "posts_reused": len(text.full) - text.encoded,
        },
        "seconds": {"text_encoder": round(text.seconds, 2), "total": round(time.perf_counter() - t_start, 2)},
    }


def write_online(
    h: pit.History,
    cat: Catalog,
    tables: dict[str, pa.Table],
    cfg: FeaturesConfig,
    online: Path,
    features: Path,
) -> dict[str, int]:
    """The online snapshot as of just after the last event; returns its row counts."""
    as_of_s = (
        int(max(h.pos_t.max(initial=0), h.post_created.max(initial=0), h.imps_by_post.t.max(initial=0))) + 1
    )
    with atomic_dir(online) as tmp:
        counts = build_online(h, cat, tables, as_of_s, cfg, tmp)
        write_json(
            tmp / "manifest.json",
            {
                "as_of": dt.datetime.fromtimestamp(as_of_s + h.t0, dt.UTC).isoformat(),
                "rows": counts,
                "windows": cfg.windows,
                "features_dir": str(features),
            },
        )
    return counts
