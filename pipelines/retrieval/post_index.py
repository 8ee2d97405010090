"""The post vectors of a retriever version, computed by a Ray Data job when it is registered.

Every eligible post of the online snapshot (public, not deleted, created in the last ``post_index.days``
before its ``as_of``) goes through the version's post tower, in actors that each load the snapshot once
and assemble the tower's inputs exactly as serving does (:func:`serve.index.tower_columns`). The result,
``post_id`` and ``vector`` (``p / T``, what the index holds), is logged with the version's run as the
artifact ``post_index/`` (Parquet): a serving replica that loads the version
(:func:`pipelines.common.tracking.load_post_index`) indexes those vectors as they are and embeds only the
posts created since (:class:`serve.index.RetrieverSlot`).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.common.config import PostIndexConfig
from pipelines.common.tracking import POST_INDEX_ARTIFACT as ARTIFACT

log = logging.getLogger(__name__)


def eligible_posts(store: Any, days: float) -> np.ndarray:
    """Ids of the snapshot's public, undeleted posts of the last ``days`` before its ``as_of``."""
    from serve.store import VISIBILITY_CODE

    now = store.as_of_s
    ids = store.recent_posts(now - days * 86400, now + 1.0)
    post = store.posts(ids, ("visibility_code", "deleted_s"))
    return np.asarray(
        ids[(post["visibility_code"] == VISIBILITY_CODE["public"]) & np.isnan(post["deleted_s"])], np.int64
    )


class PostEmbedder:
    """A Ray Data actor: the online snapshot and the retriever, loaded once; post ids → ``p / T``."""

    def __init__(self, data_dir: str, model_file: str) -> None:
        from models.retriever import ServableRetriever
        from serve.store import EmbeddedStore

        self.store = EmbeddedStore.load(Path(data_dir))
        self.retriever = ServableRetriever.load(Path(model_file))

    def __call__(self, batch: pa.Table) -> pa.Table:
        from serve.index import tower_columns

        r = self.retriever
        ids = batch.column("post_id").to_numpy().astype(np.int64)
        cols = tower_columns(self.store, 0, ids, self.store.as_of_s)
        vectors = (r.embed_posts({c: cols[c] for c in r.post_columns}) / r.temperature).astype(np.float32)
        flat = pa.array(vectors.reshape(-1), pa.float32())
        return pa.table({"post_id": ids, "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])})


def embed_posts(data_dir: Path, model_file: Path, cfg: PostIndexConfig, out: Path) -> int:
    """Embed the eligible posts of ``data_dir``'s online snapshot with the retriever in ``model_file``;
    Parquet files under ``out``; returns how many posts."""
    import ray

    from serve.store import EmbeddedStore

    ids = eligible_posts(EmbeddedStore.load(data_dir), cfg.days)
    if not len(ids):
        return 0
    ray.data.from_arrow(pa.table({"post_id": ids})).map_batches(
        PostEmbedder,
        fn_constructor_kwargs={"data_dir": str(data_dir), "model_file": str(model_file)},
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=cfg.actors),
    ).write_parquet(str(out))
    return len(ids)


def log_post_index(data_dir: Path, model_file: Path, cfg: PostIndexConfig) -> int:
    """The vectors as the active MLflow run's artifact ``post_index/``; how many posts (0, and nothing
    logged, without an online snapshot)."""
    import mlflow

    if not (data_dir / "online" / "manifest.json").exists():
        log.warning("%s/online: no snapshot; the version is registered without post vectors", data_dir)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        n = embed_posts(data_dir, model_file, cfg, Path(tmp) / ARTIFACT)
        if n:
            mlflow.log_artifacts(str(Path(tmp) / ARTIFACT), ARTIFACT)
    return n
