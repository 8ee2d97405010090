"""Out-of-network retrieval: the registered two-tower retriever and a FAISS index of post vectors.

:class:`PostIndex` holds one retriever version and the vectors of the public posts of the retrieval
window, embedded by its post tower (:meth:`models.retriever.ServableRetriever.embed_posts`) from the online
store's columns. It is built for that version when the version is loaded, and :meth:`PostIndex.catch_up`
embeds and adds the posts created since (this replica's ``POST /posts`` at once, other replicas' when
their records reach this store), so a new post is retrievable within seconds of existing. A search
returns the top posts by ``u · p / T`` (exact inner product, or HNSW at scale); the caller adds each
returned post's prior (its state now) and applies the visibility rules.

:class:`RetrieverSlot` resolves the ``feed-retriever`` alias like :class:`serve.ranking.ModelSlots` does for
the ranker: a new version's index is built aside and swapped in with one reference assignment, so a
request in flight finishes on the index it started with.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serve.features import assemble
from serve.store import VISIBILITY_CODE, OnlineStore

log = logging.getLogger(__name__)

#: Posts embedded per post-tower call.
EMBED_BATCH = 4096


def tower_columns(store: OnlineStore, viewer: int, post_ids: np.ndarray, now_s: float) -> dict[str, Any]:
    """The retriever's input columns for ``post_ids`` (posts and their state) and ``viewer``: the ranker's
    feature assembly, of which each tower reads its part."""
    ids = np.asarray(post_ids, np.int64)
    return assemble(store, viewer, ids if len(ids) else np.zeros(1, np.int64), now_s)


@dataclass
class PostIndex:
    """One retriever version's FAISS index over public posts (ids → vectors)."""

    retriever: Any  # models.retriever.ServableRetriever
    version: str
    window_s: float
    kind: str = "flat"  # flat (exact inner product) or hnsw
    hnsw_m: int = 32
    ef_search: int = 128
    indexed: set[int] = field(default_factory=set)
    index: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        import faiss

        d = self.retriever.dim
        if self.kind == "hnsw":
            inner = faiss.IndexHNSWFlat(d, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efSearch = self.ef_search
        else:
            inner = faiss.IndexFlatIP(d)
        self.index = faiss.IndexIDMap2(inner)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def catch_up(self, store: OnlineStore, now_s: float, viewer: int = 0) -> int:
        """Embed and add the public posts of the window not indexed yet; returns how many."""
        ids = store.recent_posts(now_s - self.window_s, now_s + 1.0)
        with self._lock:
            fresh = np.array([p for p in ids.tolist() if p not in self.indexed], np.int64)
            if not len(fresh):
                return 0
            post = store.posts(fresh, ("visibility_code", "deleted_s"))
            fresh = fresh[
                (post["visibility_code"] == VISIBILITY_CODE["public"]) & np.isnan(post["deleted_s"])
            ]
            for lo in range(0, len(fresh), EMBED_BATCH):
                part = fresh[lo : lo + EMBED_BATCH]
                cols = tower_columns(store, viewer, part, now_s)
                vectors = self.retriever.embed_posts({c: cols[c] for c in self.retriever.post_columns})
                self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), part)
            self.indexed.update(fresh.tolist())
            return len(fresh)

    def search(self, viewer_vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` posts with the highest ``u · p``: ids and inner products (fewer when fewer exist)."""
        if len(self) == 0 or k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        dots, ids = self.index.search(np.ascontiguousarray(viewer_vector[None, :], np.float32), k)
        keep = ids[0] >= 0
        return ids[0][keep].astype(np.int64), dots[0][keep]


def viewer_vector(retriever: Any, store: OnlineStore, viewer: int, now_s: float) -> np.ndarray:
    """The viewer tower's vector for ``viewer`` as of now."""
    cols = tower_columns(store, viewer, np.zeros(0, np.int64), now_s)
    return np.asarray(retriever.embed_viewers({c: cols[c][:1] for c in retriever.viewer_columns})[0])


def two_tower_scores(
    retriever: Any, store: OnlineStore, viewer: int, post_ids: np.ndarray, now_s: float
) -> np.ndarray:
    """``u · p / T + prior`` of ``post_ids`` for ``viewer`` now (the posts embedded on the fly)."""
    cols = tower_columns(store, viewer, post_ids, now_s)
    vectors = retriever.embed_posts({c: cols[c] for c in retriever.post_columns})
    prior = retriever.prior({c: cols[c] for c in retriever.prior_columns})
    return np.asarray(
        retriever.scores(viewer_vector(retriever, store, viewer, now_s), vectors, prior), np.float64
    )


def prerank(store: OnlineStore, viewer: int, now_s: float, index: PostIndex, cands: Any, keep: int) -> Any:
    """The ``keep`` candidates (a :class:`serve.retrieval.Candidates`) with the best two-tower score, in
    their retrieved order; scores the retrieval did not compute (friends' posts) are computed here."""
    score = np.array(
        cands.retrieval_score if cands.retrieval_score is not None else np.full(len(cands.post_ids), np.nan)
    )
    missing = np.isnan(score)
    if missing.any():
        score[missing] = two_tower_scores(index.retriever, store, viewer, cands.post_ids[missing], now_s)
    best = np.sort(np.argsort(-score, kind="stable")[:keep])
    out = cands.take(best)
    out.retrieval_score = score[best]
    out.dropped = {**cands.dropped, "preranked_out": len(cands.post_ids) - len(best)}
    return out


class RetrieverSlot:
    """The served retriever version (``name@alias``) and its index, refreshed like the ranker's slots.

    ``resolve(name, alias)`` and ``load(name, version)`` are injectable (tests); by default they read the
    MLflow registry.
    """

    def __init__(
        self,
        name: str,
        alias: str,
        window_s: float,
        kind: str,
        data_dir: Path,
        resolve: Callable[[str, str], str | None] | None = None,
        load: Callable[[str, str], Any] | None = None,
        tracking_uri: str | None = None,
    ) -> None:
        from pipelines.common.tracking import load_retriever_version, version_of

        self.name, self.alias, self.window_s, self.kind = name, alias, window_s, kind
        if resolve is None or load is None:
            import mlflow

            from pipelines.common.tracking import tracking_uri as default_uri

            uri = tracking_uri or default_uri(data_dir)
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)

        def _resolve(n: str, a: str) -> str | None:
            mv = version_of(n, a)
            return None if mv is None else str(mv.version)

        self._resolve = resolve or _resolve
        self._load = load or (lambda n, v: load_retriever_version(f"models:/{n}/{v}"))
        self.current: PostIndex | None = None
        self._lock = threading.Lock()

    def refresh(self, store: OnlineStore, now_s: float) -> str | None:
        """Re-resolve the alias; a new version is loaded and its index built aside, then swapped in.
        Returns the new version, or None when nothing changed (or it failed: the old one stays)."""
        with self._lock:
            try:
                version = self._resolve(self.name, self.alias)
            except Exception:
                log.exception("resolving %s@%s failed; keeping the current index", self.name, self.alias)
                return None
            if version is None or (self.current is not None and self.current.version == version):
                return None
            try:
                fresh = PostIndex(self._load(self.name, version), version, self.window_s, self.kind)
                fresh.catch_up(store, now_s)
            except Exception:
                log.exception("loading %s version %s failed; keeping the current index", self.name, version)
                return None
            self.current = fresh
            log.info("retrieving with %s version %s (%d posts indexed)", self.name, version, len(fresh))
            return version

    def catch_up(self, store: OnlineStore, now_s: float) -> int:
        index = self.current
        return index.catch_up(store, now_s) if index is not None else 0
