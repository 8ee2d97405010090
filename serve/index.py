"""Out-of-network retrieval: the registered two-tower retriever and a FAISS index of post vectors.

:class:`PostIndex` holds one retriever version and the vectors of the public posts of the retrieval
window (the ones logged with the version at registration, and its post tower,
:meth:`models.retriever.ServableRetriever.embed_posts`, for the posts that came later), each with its
prior. It is built for that version when the version is loaded, and :meth:`PostIndex.catch_up` adds the
posts created since (this replica's ``POST /posts`` at once, other replicas' when their records reach
this store), so a new post is retrievable within seconds of existing. A search returns the top posts by
the whole two-tower score ``u · p / T + prior`` (exact inner product, or HNSW at scale), the priors as of
the last refresh; the caller applies the visibility rules.

:class:`RetrieverSlot` resolves the ``feed-retriever`` alias like :class:`serve.ranking.ModelSlots` does for
the ranker: a new version's index is built aside and swapped in with one reference assignment, so a
request in flight finishes on the index it started with.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serve.features import assemble, post_state_columns, viewer_columns
from serve.store import VISIBILITY_CODE, OnlineStore

log = logging.getLogger(__name__)

#: Posts embedded per post-tower call.
EMBED_BATCH = 4096


def tower_columns(store: OnlineStore, viewer: int, post_ids: np.ndarray, now_s: float) -> dict[str, Any]:
    """The retriever's input columns for ``post_ids`` (posts and their state) and ``viewer``: the ranker's
    feature assembly, of which each tower reads its part."""
    ids = np.asarray(post_ids, np.int64)
    return assemble(store, viewer, ids if len(ids) else np.zeros(1, np.int64), now_s)


@dataclass(frozen=True)
class _Entries:
    """What a search reads, swapped as one object: the FAISS index and, per indexed post, its vector,
    prior and creation time (row ``rows[post id]``)."""

    index: Any
    ids: np.ndarray  # (N,) int64
    vectors: np.ndarray  # (N, dim) float32: p / T
    prior: np.ndarray  # (N,) float32: as of the last refresh
    created: np.ndarray  # (N,) float64 epoch seconds
    rows: dict[int, int]


@dataclass
class PostIndex:
    """One retriever version's FAISS index over the window's public posts: each post as ``[p / T, b]`` (its
    vector over the temperature, and its prior as of the last refresh), so that the inner product with a
    viewer's ``[u, 1]`` is the two-tower score ``u · p / T + b`` itself: the index ranks by the whole
    score, not by ``u · p`` alone. :meth:`refresh` recomputes the priors (they move with age and counters)
    and drops posts older than the window, rebuilding the index; a search ranks with the priors of the last
    refresh (``retrieval.prior_refresh_s``, a minute by default: a post's age is in hours).

    Thread-safe: the watcher thread and ``POST /posts`` add posts while requests search. Embedding runs
    outside the lock; adding, rebuilding and searching hold it (FAISS allows concurrent searches, not a
    search beside an add), and what a search reads is one consistent :class:`_Entries`.
    """

    retriever: Any  # models.retriever.ServableRetriever
    version: str
    window_s: float
    kind: str = "flat"  # flat (exact inner product) or hnsw
    hnsw_m: int = 32
    ef_search: int = 128
    #: (sorted post ids, their ``p / T``) computed when the version was registered (its ``post_index``
    #: artifact): such posts are indexed without running the post tower.
    precomputed: tuple[np.ndarray, np.ndarray] | None = None
    embedded: int = 0  # posts this index ran through the post tower (the others were precomputed)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _entries: _Entries | None = None

    def __post_init__(self) -> None:
        d = self.retriever.dim
        self._entries = _Entries(
            self._empty(),
            np.zeros(0, np.int64),
            np.zeros((0, d), np.float32),
            np.zeros(0, np.float32),
            np.zeros(0),
            {},
        )

    def _empty(self) -> Any:
        import faiss

        d = self.retriever.dim + 1
        inner: Any
        if self.kind == "hnsw":
            inner = faiss.IndexHNSWFlat(d, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efSearch = self.ef_search
        else:
            inner = faiss.IndexFlatIP(d)
        return faiss.IndexIDMap2(inner)

    @property
    def entries(self) -> _Entries:
        assert self._entries is not None
        return self._entries

    def __len__(self) -> int:
        return len(self.entries.ids)

    @property
    def indexed(self) -> set[int]:
        return set(self.entries.rows)

    def _embed(
        self, store: OnlineStore, ids: np.ndarray, now_s: float, viewer: int, vectors: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """``p / T`` (unless ``vectors`` is false: an empty array) and the prior now of ``ids``."""
        r = self.retriever
        out, prior = [], []
        for lo in range(0, len(ids), EMBED_BATCH):
            part = ids[lo : lo + EMBED_BATCH]
            # The priors alone read the posts' state, not a viewer's whole feature rows (unless a prior
            # was trained on more than that).
            cols = post_state_columns(store, part, now_s) if not vectors else None
            if cols is None or not set(r.prior_columns) <= cols.keys():
                cols = tower_columns(store, viewer, part, now_s)
            if vectors:
                out.append(r.embed_posts({c: cols[c] for c in r.post_columns}) / r.temperature)
            prior.append(r.prior({c: cols[c] for c in r.prior_columns}, len(part)))
        vec = np.concatenate(out).astype(np.float32) if out else np.zeros((0, r.dim), np.float32)
        return vec, (np.concatenate(prior).astype(np.float32) if prior else np.zeros(0, np.float32))

    def _vectors(
        self, store: OnlineStore, ids: np.ndarray, now_s: float, viewer: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``p / T`` and the prior now of ``ids``: the vectors precomputed at registration where there is
        one, the post tower for the rest."""
        known_ids, known_vectors = self.precomputed or (np.zeros(0, np.int64), None)
        at = np.minimum(np.searchsorted(known_ids, ids), max(len(known_ids) - 1, 0))
        have = known_ids[at] == ids if len(known_ids) else np.zeros(len(ids), bool)
        if not have.any() or known_vectors is None:
            self.embedded += len(ids)
            return self._embed(store, ids, now_s, viewer)
        vectors = np.zeros((len(ids), self.retriever.dim), np.float32)
        vectors[have] = known_vectors[at[have]]
        if (~have).any():
            vectors[~have] = self._embed(store, ids[~have], now_s, viewer)[0]
            self.embedded += int((~have).sum())
        return vectors, self._embed(store, ids, now_s, viewer, vectors=False)[1]

    @staticmethod
    def _augmented(vectors: np.ndarray, prior: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.concatenate([vectors, prior[:, None]], axis=1), np.float32)

    def catch_up(self, store: OnlineStore, now_s: float, viewer: int = 0) -> int:
        """Embed and add the public posts of the window not indexed yet; returns how many."""
        ids = store.recent_posts(now_s - self.window_s, now_s + 1.0)
        known = self.entries.rows
        fresh = np.array([p for p in ids.tolist() if p not in known], np.int64)
        if not len(fresh):
            return 0
        post = store.posts(fresh, ("visibility_code", "deleted_s", "created_s"))
        public = (post["visibility_code"] == VISIBILITY_CODE["public"]) & np.isnan(post["deleted_s"])
        fresh, created = fresh[public], post["created_s"][public].astype(np.float64)
        if not len(fresh):
            return 0
        vectors, prior = self._vectors(store, fresh, now_s, viewer)  # outside the lock: the slow part
        with self._lock:
            old = self.entries
            keep = np.array([p not in old.rows for p in fresh.tolist()], bool)  # added meanwhile
            fresh, created, vectors, prior = fresh[keep], created[keep], vectors[keep], prior[keep]
            if not len(fresh):
                return 0
            old.index.add_with_ids(self._augmented(vectors, prior), fresh)
            start = len(old.ids)
            rows = {**old.rows, **{int(p): start + i for i, p in enumerate(fresh.tolist())}}
            self._entries = _Entries(
                old.index,
                np.concatenate([old.ids, fresh]),
                np.concatenate([old.vectors, vectors]),
                np.concatenate([old.prior, prior]),
                np.concatenate([old.created, created]),
                rows,
            )
            return len(fresh)

    def refresh(self, store: OnlineStore, now_s: float, viewer: int = 0) -> None:
        """Priors as of ``now_s`` for the posts still in the window (older ones leave), in a new index
        built aside and swapped in."""
        old = self.entries
        alive = old.created >= now_s - self.window_s
        ids, vectors, created = old.ids[alive], old.vectors[alive], old.created[alive]
        prior = self._embed(store, ids, now_s, viewer, vectors=False)[1]
        index = self._empty()
        if len(ids):
            index.add_with_ids(self._augmented(vectors, prior), ids)
        with self._lock:
            current = self.entries
            added = len(current.ids) > len(old.ids)  # posts added meanwhile: keep them too
            if added:
                extra = slice(len(old.ids), None)
                index.add_with_ids(
                    self._augmented(current.vectors[extra], current.prior[extra]), current.ids[extra]
                )
                ids = np.concatenate([ids, current.ids[extra]])
                vectors = np.concatenate([vectors, current.vectors[extra]])
                prior = np.concatenate([prior, current.prior[extra]])
                created = np.concatenate([created, current.created[extra]])
            rows = {int(p): i for i, p in enumerate(ids.tolist())}
            self._entries = _Entries(index, ids, vectors, prior, created, rows)

    def search(self, viewer_vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` posts with the highest two-tower score ``u · p / T + b`` (b: the prior as of the last
        :meth:`refresh`): their ids and those scores. Fewer when fewer exist."""
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        query = np.ascontiguousarray(np.append(viewer_vector, 1.0)[None, :], np.float32)
        with self._lock:
            e = self.entries
            if len(e.ids) == 0:
                return np.zeros(0, np.int64), np.zeros(0, np.float32)
            scores, ids = e.index.search(query, k)
        keep = ids[0] >= 0
        return ids[0][keep].astype(np.int64), scores[0][keep].astype(np.float32)


def viewer_vector(retriever: Any, store: OnlineStore, viewer: int, now_s: float) -> np.ndarray:
    """The viewer tower's vector for ``viewer`` as of now (the viewer's own columns only)."""
    cols = viewer_columns(store, viewer, now_s)
    return np.asarray(retriever.embed_viewers({c: cols[c] for c in retriever.viewer_columns})[0])


def two_tower_scores(
    retriever: Any, store: OnlineStore, viewer: int, post_ids: np.ndarray, now_s: float
) -> np.ndarray:
    """``u · p / T + prior`` of ``post_ids`` for ``viewer`` now: posts embedded on the fly, the viewer's
    vector from the same feature rows (one assembly for both)."""
    cols = tower_columns(store, viewer, post_ids, now_s)
    u = retriever.embed_viewers({c: cols[c][:1] for c in retriever.viewer_columns})[0]
    vectors = retriever.embed_posts({c: cols[c] for c in retriever.post_columns})
    prior = retriever.prior({c: cols[c] for c in retriever.prior_columns}, len(post_ids))
    return np.asarray(retriever.scores(u, vectors, prior), np.float64)


def prerank(
    store: OnlineStore,
    viewer: int,
    now_s: float,
    index: PostIndex,
    cands: Any,
    keep: int,
    suggested_share: float = 0.5,
) -> Any:
    """At most ``keep`` candidates (a :class:`serve.retrieval.Candidates`), in their retrieved order: the
    best suggestions, at most ``ceil(suggested_share * keep)`` of them unless friends' posts are too few to
    fill the rest (``rerank.suggested.max_share``: no more than the feed could show), and friends' posts
    by two-tower score in the room left. Each source is ranked within itself: the two-tower score leaves
    the relation out (the training-only context tower took it), so across sources it would drop friends'
    posts first. Friends' scores are computed here."""
    score = np.array(
        cands.retrieval_score if cands.retrieval_score is not None else np.full(len(cands.post_ids), np.nan)
    )
    oon = np.flatnonzero(cands.suggested)
    friends = np.flatnonzero(~cands.suggested)
    share = max(math.ceil(suggested_share * keep - 1e-9), keep - len(friends))
    oon = oon[np.argsort(-score[oon], kind="stable")[: min(keep, share)]]
    room = keep - len(oon)
    if len(friends) > room:
        score[friends] = two_tower_scores(index.retriever, store, viewer, cands.post_ids[friends], now_s)
        friends = friends[np.argsort(-score[friends], kind="stable")[:room]]
    best = np.sort(np.concatenate([friends, oon]))
    out = cands.take(best)
    out.retrieval_score = score[best]
    out.dropped = {**cands.dropped, "preranked_out": len(cands.post_ids) - len(best)}
    return out


class RetrieverSlot:
    """The served retriever version (``name@alias``) and its index, refreshed like the ranker's slots.

    ``resolve(name, alias)``, ``load(name, version)`` and ``load_vectors(name, version)`` (the post
    vectors logged with the version, or None) are injectable (tests); by default they read the MLflow
    registry (with ``load`` injected and ``load_vectors`` not, there are no precomputed vectors).
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
        load_vectors: Callable[[str, str], tuple[np.ndarray, np.ndarray] | None] | None = None,
    ) -> None:
        from pipelines.common.tracking import load_post_index, load_retriever_version, version_of

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
        self._load_vectors = load_vectors or (load_post_index if load is None else (lambda n, v: None))
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
                retriever = self._load(self.name, version)
                fresh = PostIndex(retriever, version, self.window_s, self.kind)
                try:
                    fresh.precomputed = self._load_vectors(self.name, version)
                except Exception:  # the index is still built, by the post tower here
                    log.exception("the post vectors of %s version %s did not load", self.name, version)
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

    def info(self) -> dict[str, Any] | None:
        """What ``/healthz`` says of it: the version, posts indexed, and how many of them the post tower
        embedded here (the rest came precomputed with the version)."""
        index = self.current
        if index is None:
            return None
        return {"version": index.version, "posts": len(index), "embedded_here": index.embedded}

    def refresh_priors(self, store: OnlineStore, now_s: float) -> None:
        """The served index's priors as of now, and posts past the window dropped."""
        index = self.current
        if index is not None:
            index.refresh(store, now_s)
