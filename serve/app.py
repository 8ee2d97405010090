"""The feed on Ray Serve: the FeedIngress deployment, and the Retriever and Ranker deployments when the
retriever or the model runs apart.

::

    HTTP ──► FeedIngress (FastAPI, autoscaled, fractional CPU)
               │  auth (JWT) · validation · retrieval over its online store · re-ranking · page + cursor
               │  served impressions, events and posts → serving log (D/raw/*/serving/, durable)
               │
               ├─ retrieval.placement: ingress (default)
               │     RetrievalHost in the same replica: suggestions from its index, pre-ranking
               │
               ├─ retrieval.placement: deployment
               │     handle.suggest.remote(viewer, now, friends' candidates, suggest?)   retrieval.timeout_s
               │        ▼
               │     Retriever (autoscaled; its own store copy and RetrievalHost)
               │
               ├─ ranking.placement: ingress (default)
               │     RankingHost in the same replica: @serve.batch across concurrent feeds,
               │     online features for every candidate → one forward per arm
               │
               └─ ranking.placement: deployment
                     handle.score.remote(ScoreRequest(viewer, post ids, now, arm))   ids in, Scores out
                        ▼
                     Ranker (autoscaled; @serve.batch; the same RankingHost)

    RankingHost: models:/feed-ranker@champion (+ @challenger), aliases re-resolved every model.poll_s
    RetrievalHost: models:/feed-retriever@champion and its FAISS index of public posts (out-of-network
    candidates), re-resolved and caught up with new posts every retrieval.index_poll_s

Retrieval and re-ranking are index lookups and array arithmetic on the replica's own store; with a
separate Ranker only the candidate ids (a few KB) and the probabilities cross a process boundary, and the
feature rows are assembled next to the model. If ranking fails or exceeds ``ranking.timeout_s`` the
ingress serves the retrieved posts newest first (``fallback: true``).

Run, deploy, test::

    FEED_JWT_SECRET=... serve run configs/serve.yaml        # foreground, local Ray
    FEED_JWT_SECRET=... serve deploy configs/serve.yaml     # onto a running cluster (ray start --head)
    make demo                                               # pipelines, then this app and a real feed
    pytest tests/serving
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from pipelines.common.config import ConfigError
from serve.api import create_api
from serve.auth import TokenAuth
from serve.config import ServeConfig, parse
from serve.feed import Clock, FeedService
from serve.index import RetrieverSlot
from serve.log import LogTailer, ServingLog, StoreSync
from serve.metrics import FeedMetrics
from serve.ranking import ModelSlots, Scorer
from serve.records import ScoreRequest, Scores
from serve.retrieval import Candidates, with_suggestions
from serve.runtime import settle_heap
from serve.store import EmbeddedStore, OnlineStore

log = logging.getLogger(__name__)


def open_store(cfg: ServeConfig) -> tuple[OnlineStore, StoreSync | None]:
    """The configured online store; an embedded one is kept current from the serving log."""
    if cfg.store.backend == "redis":
        from serve.redis_store import RedisStore

        return RedisStore.connect(cfg.store.redis_url, cfg.data_dir, cfg.store.redis_prefix), None
    store = EmbeddedStore.load(cfg.data_dir)
    tailer = LogTailer(cfg.data_dir, since_ms=int(store.as_of_s * 1000))
    return store, StoreSync(store, tailer, cfg.store.poll_s)


def _writer_name(prefix: str) -> str:
    try:
        return f"{prefix}-{serve.get_replica_context().replica_id.unique_id}"
    except Exception:  # outside a Serve replica
        import os

        return f"{prefix}-{os.getpid()}"


class RetrievalHost:
    """The out-of-network retriever of a replica: ``feed-retriever@champion`` and its post index, re-resolved
    and caught up with new posts by a watcher thread every ``retrieval.index_poll_s``."""

    def __init__(self, cfg: ServeConfig, store: OnlineStore, clock: Clock) -> None:
        r = cfg.retrieval
        self.store, self.clock, self.poll_s, self.prior_refresh_s = (
            store,
            clock,
            r.index_poll_s,
            r.prior_refresh_s,
        )
        self.slot = RetrieverSlot(
            r.retriever,
            r.retriever_alias,
            r.window_days * 86400,
            r.index,
            cfg.data_dir,
            tracking_uri=cfg.model.tracking_uri,
        )
        self.slot.refresh(store, clock.now())
        self._stop = threading.Event()
        self.watcher = threading.Thread(target=self._watch, name="index-watch", daemon=True)
        self.watcher.start()

    def _watch(self) -> None:
        last_priors = self.clock.now()
        while not self._stop.wait(self.poll_s):
            try:
                now = self.clock.now()
                if self.slot.refresh(self.store, now) is not None:
                    last_priors = now
                    settle_heap()  # the new version's model and index live until the next swap
                self.slot.catch_up(self.store, now)
                if now - last_priors >= self.prior_refresh_s:
                    self.slot.refresh_priors(self.store, now)
                    last_priors = now
            except Exception:  # the thread must survive a bad poll; the old index keeps serving
                log.exception("index refresh failed")


class RankingHost:
    """The ranker where it runs: model slots re-resolved by a watcher thread, the scorer, a warm-up."""

    def __init__(self, cfg: ServeConfig, store: OnlineStore) -> None:
        import torch

        torch.set_num_threads(cfg.ranking.torch_threads)
        self.cfg = cfg
        self.store = store
        self.slots = ModelSlots(cfg.model, cfg.data_dir)
        self.slots.refresh()
        self.scorer = Scorer(store, self.slots)
        self._stop = threading.Event()
        self.watcher = threading.Thread(target=self._watch, name="alias-watch", daemon=True)
        self.watcher.start()
        viewer, posts = store.sample(8)
        for arm in self.slots.versions():  # the first request should not pay for lazy initialization
            self.scorer.score([ScoreRequest(viewer, posts, store.as_of_s, arm)])

    def _watch(self) -> None:
        while not self._stop.wait(self.cfg.model.poll_s):
            if self.slots.refresh():
                settle_heap()  # the new version's objects live until the next swap


def _batching(method: Any, cfg: ServeConfig) -> None:
    """The ``@serve.batch`` settings of ``method`` from ``ranking`` (the decorator's own are never used)."""
    method.set_max_batch_size(cfg.ranking.max_batch_size)
    method.set_batch_wait_timeout_s(cfg.ranking.batch_wait_timeout_s)


@serve.deployment(name="Ranker", ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
class Ranker:
    """Scores feed candidates with the registered ranker (``ranking.placement: deployment``)."""

    def __init__(self, args: dict[str, Any]) -> None:
        cfg = parse(args)
        self.store, self.sync = open_store(cfg)
        self.host = RankingHost(cfg, self.store)
        _batching(self.score, cfg)
        settle_heap()

    @serve.batch  # max_batch_size and batch_wait_timeout_s: _batching, from the config
    async def score(self, requests: list[ScoreRequest]) -> list[Scores]:
        return self.host.scorer.score(requests)

    async def versions(self) -> dict[str, str]:
        return self.host.slots.versions()

    def check_health(self) -> None:
        if not self.host.watcher.is_alive() or (self.sync is not None and not self.sync.alive()):
            raise RuntimeError("a background thread of the ranker died")


@serve.deployment(name="Retriever", ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=8)
class Retriever:
    """Friends' candidates → those and the suggestions from its index, pre-ranked
    (``retrieval.placement: deployment``): the viewer tower, the FAISS index and the pre-ranker live here,
    over this replica's own copy of the online store (kept up like an ingress replica's)."""

    def __init__(self, args: dict[str, Any]) -> None:
        cfg = parse(args)
        self.cfg = cfg
        self.store, self.sync = open_store(cfg)
        clock = Clock(cfg.clock.mode, self.store.as_of_s, cfg.clock.origin_s)
        self.host = RetrievalHost(cfg, self.store, clock)
        settle_heap()

    async def suggest(self, viewer: int, now_s: float, in_network: Candidates, suggest: bool) -> Candidates:
        """:func:`with_suggestions` (serve.retrieval) over this replica's index, in a worker thread: the event
        loop stays free for ``info`` and for taking requests (``max_ongoing_requests`` bounds the queue;
        a caller past ``retrieval.timeout_s`` has gone on without the answer)."""
        cfg, index, budget = self.cfg, self.host.slot.current, self.cfg.ranking.max_candidates
        share = cfg.rerank.suggested.max_share
        args = (self.store, viewer, now_s, cfg.retrieval, budget, index, in_network, suggest, share)
        return await asyncio.to_thread(with_suggestions, *args)

    async def info(self) -> dict[str, Any] | None:
        return self.host.slot.info()

    def check_health(self) -> None:
        if not self.host.watcher.is_alive() or (self.sync is not None and not self.sync.alive()):
            raise RuntimeError("a background thread of the retriever died")


@serve.deployment(name="FeedIngress", ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
@serve.ingress()
class FeedIngress:
    """HTTP front: auth, retrieval, ranking (here or through the Ranker handle), re-ranking, paging, event
    and post intake."""

    def __init__(
        self,
        args: dict[str, Any],
        ranker: DeploymentHandle | None = None,
        retriever: DeploymentHandle | None = None,
    ) -> None:
        cfg = parse(args)
        self.cfg = cfg
        self.ranker = ranker
        self.retriever = retriever
        self.auth = TokenAuth.from_config(cfg.auth)
        store, self.sync = open_store(cfg)
        self.host = RankingHost(cfg, store) if ranker is None else None
        _batching(self._score_here, cfg)
        self._encoder: Any = None
        self._encoder_lock = threading.Lock()
        clock = Clock(cfg.clock.mode, store.as_of_s, cfg.clock.origin_s)
        here = cfg.retrieval.out_of_network > 0 and retriever is None
        self.retrieval = RetrievalHost(cfg, store, clock) if here else None
        self.service = FeedService(
            cfg,
            store,
            ServingLog(cfg.data_dir, _writer_name("ingress")),
            self._score_here if ranker is None else self._score_remote,
            clock,
            FeedMetrics(),
            encode_text=self._encode_text,
            retriever=self.retrieval.slot if self.retrieval is not None else None,
            suggest_remote=self._suggest_remote if retriever is not None else None,
        )
        settle_heap()  # what lives as long as the replica, out of the collector's full passes

    @serve.batch  # max_batch_size and batch_wait_timeout_s: _batching, from the config
    async def _score_here(self, requests: list[ScoreRequest]) -> list[Scores]:
        assert self.host is not None
        return self.host.scorer.score(requests)

    async def _score_remote(self, request: ScoreRequest) -> Scores:
        assert self.ranker is not None
        result: Scores = await self.ranker.score.remote(request)
        return result

    async def _suggest_remote(
        self, viewer: int, now_s: float, in_network: Candidates, suggest: bool
    ) -> Candidates:
        assert self.retriever is not None
        result: Candidates = await self.retriever.suggest.remote(viewer, now_s, in_network, suggest)
        return result

    async def _health(self) -> dict[str, Any]:
        retriever: dict[str, Any] | None
        if self.retriever is not None:
            try:  # a Retriever that does not answer is reported, not a failed health check
                retriever = await asyncio.wait_for(self.retriever.info.remote(), 5.0)
            except Exception as e:
                retriever = {"error": f"{type(e).__name__}: {e}"[:300]}
        else:
            retriever = self.retrieval.slot.info() if self.retrieval is not None else None
        where = {"retrieval_placement": "deployment" if self.retriever is not None else "ingress"}
        if self.host is not None:
            models = self.host.slots.versions()
            return {"models": models, "placement": "ingress", "retriever": retriever, **where}
        assert self.ranker is not None
        models = await self.ranker.versions.remote()
        return {"models": models, "placement": "deployment", "retriever": retriever, **where}

    def _encode_text(self, texts: list[str]) -> np.ndarray:
        with self._encoder_lock:
            if self._encoder is None:
                self._encoder = text_encoder(self.cfg.data_dir)
        out: np.ndarray = self._encoder(texts)
        return out

    def check_health(self) -> None:
        if (
            (self.sync is not None and not self.sync.alive())
            or (self.host is not None and not self.host.watcher.is_alive())
            or (self.retrieval is not None and not self.retrieval.watcher.is_alive())
        ):
            raise RuntimeError("a background thread of the ingress died")

    def __serve_build_asgi_app__(self) -> Any:
        return create_api(self.service, self.auth, self._health)


def text_encoder(data_dir: Path) -> Any:
    """MiniLM + the features run's PCA: new posts get the same text embedding training used."""
    from pipelines.features.text import Projection, TextEncoder

    pca = data_dir / "features" / "text_pca.npz"
    if not pca.exists():
        raise ConfigError(f"{pca}: missing (run pipelines.features first)")
    encoder, projection = TextEncoder(threads=1), Projection.load(pca)
    return lambda texts: projection(encoder.encode(list(texts)))


def build_app(args: dict[str, Any]) -> Any:
    """Application builder for ``serve run`` / ``serve deploy`` (``import_path: serve.app:build_app``);
    Serve applies the config file's ``deployments:`` section itself. See :func:`compose`."""
    return compose(args)


def compose(args: dict[str, Any], deployments: list[dict[str, Any]] | None = None) -> Any:
    """The app for the Python API (``serve.run``).

    Validates the args, resolves ``data_dir`` against the current directory and fixes the snapshot clock's
    origin (when ``online/`` was written), so every replica of every app agrees on serving time.
    ``deployments`` (the Serve config file's list) sets replicas, autoscaling and resources per
    deployment, as ``serve run`` does from the file.
    """
    cfg = parse(args, "applications[0].args")
    data_dir = cfg.data_dir.resolve()
    if not (data_dir / "online" / "manifest.json").exists():
        raise ConfigError(f"{data_dir}/online: no online snapshot (run make demo or pipelines.features)")
    auth = TokenAuth.from_config(cfg.auth)  # fail at deploy time, not in every replica, without a secret
    resolved = cfg.model_dump(mode="json")
    resolved["auth"]["secret"] = auth.secret  # replicas may run where the deployer's environment is not
    resolved["data_dir"] = str(data_dir)
    if resolved["clock"]["origin_s"] is None:  # when the snapshot was written: every app agrees
        resolved["clock"]["origin_s"] = (data_dir / "online" / "manifest.json").stat().st_mtime
    options = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in deployments or []}
    ingress = FeedIngress.options(**options.get("FeedIngress", {}))  # type: ignore[attr-defined]
    ranker = retriever = None
    if cfg.ranking.placement == "deployment":
        ranker = Ranker.options(**options.get("Ranker", {})).bind(resolved)  # type: ignore[attr-defined]
    if cfg.retrieval.placement == "deployment" and cfg.retrieval.out_of_network > 0:
        retriever = Retriever.options(**options.get("Retriever", {})).bind(resolved)  # type: ignore[attr-defined]
    return ingress.bind(resolved, ranker, retriever)
