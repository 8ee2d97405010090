"""Ranking: the registered ranker scoring every candidate of a batch of feed requests in one forward.

:class:`ModelSlots` holds the versions behind the ``champion`` (and ``challenger``) aliases and re-resolves
them every ``model.poll_s``; a new version is loaded aside and swapped in with one reference assignment, so
requests in flight finish on the version they started with and none fails during a switch.
:class:`Scorer` turns :class:`serve.records.ScoreRequest` s into feature rows
(:func:`serve.features.assemble`), runs the forward per arm and returns :class:`serve.records.Scores`.
Both are plain Python: ``serve.app.RankingHost`` (in each ingress replica, or in the ``Ranker``
deployment) and the single-process benchmark use them alike.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.batch import Jagged
from pipelines.common.tracking import CHALLENGER, CHAMPION, load_ranker_version, tracking_uri, version_of
from serve.config import ModelSlotConfig
from serve.features import assemble
from serve.records import ScoreRequest, Scores
from serve.store import OnlineStore

log = logging.getLogger(__name__)

#: The arms: the two registry aliases (``CHAMPION``, ``CHALLENGER``, named in pipelines.common.tracking)
#: and the holdout served newest first with no model.
CHRONOLOGICAL = "chronological"
#: Columns returned beside the probabilities, to explain an item ("why you see this").
SIGNALS = ("ua_has_interacted", "ua_actions", "rel_friend_days", "x_topic_match", "p_friend_actions_1d")


#: Retrieval arms: friends' posts and the retriever's suggestions, or the out-of-network holdout.
SUGGESTIONS, FRIENDS_ONLY = "suggestions", "friends_only"


def hash_share(user_id: int, salt: str) -> float:
    """A stable number in [0, 1) per user and experiment (``salt``): experiments with different salts
    split users independently."""
    digest = hashlib.blake2b(f"{salt}:{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def arm_of(
    user_id: int, challenger_traffic: float, chronological_traffic: float = 0.0, salt: str = "feed-ab"
) -> str:
    """A stable arm per user: the same user always lands in the same arm for given traffic shares
    (``[0, c)`` challenger, ``[c, c + r)`` the reverse-chronological holdout, the rest champion)."""
    u = hash_share(user_id, salt)
    if u < challenger_traffic:
        return CHALLENGER
    return CHRONOLOGICAL if u < challenger_traffic + chronological_traffic else CHAMPION


def retrieval_arm_of(user_id: int, holdout_traffic: float, salt: str = "feed-oon") -> str:
    """``FRIENDS_ONLY`` for a stable hash-fraction ``holdout_traffic`` of users (split independently of
    the model arms), ``SUGGESTIONS`` for the rest."""
    return FRIENDS_ONLY if hash_share(user_id, salt) < holdout_traffic else SUGGESTIONS


@dataclass(frozen=True)
class LoadedModel:
    arm: str
    alias: str
    version: str
    ranker: Any  # models.servable.ServableRanker


def _resolve_alias(name: str, alias: str) -> str | None:
    mv = version_of(name, alias)
    return None if mv is None else str(mv.version)


def _load_version(name: str, version: str) -> Any:
    return load_ranker_version(f"models:/{name}/{version}")


class ModelSlots:
    """The served model versions by arm. ``resolve(name, alias)`` and ``load(name, version)`` are
    injectable (tests); by default they read the MLflow registry."""

    def __init__(
        self,
        cfg: ModelSlotConfig,
        data_dir: Path,
        resolve: Callable[[str, str], str | None] | None = None,
        load: Callable[[str, str], Any] | None = None,
    ) -> None:
        self.cfg = cfg
        if resolve is None or load is None:
            import mlflow

            uri = cfg.tracking_uri or tracking_uri(data_dir)
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
        self._resolve = resolve or _resolve_alias
        self._load = load or _load_version
        self._slots: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()  # one refresh at a time; readers never wait

    def aliases(self) -> dict[str, str]:
        out = {CHAMPION: self.cfg.alias}
        if self.cfg.challenger_traffic > 0:
            out[CHALLENGER] = self.cfg.challenger_alias
        return out

    def refresh(self) -> list[str]:
        """Re-resolve the aliases; load and swap in what changed. Returns ``arm→version`` changes."""
        changes = []
        with self._lock:
            for arm, alias in self.aliases().items():
                try:
                    version = self._resolve(self.cfg.name, alias)
                except Exception:
                    log.exception("resolving %s@%s failed; keeping the current version", self.cfg.name, alias)
                    continue
                current = self._slots.get(arm)
                if version is None or (current is not None and current.version == version):
                    continue
                try:
                    ranker = self._load(self.cfg.name, version)
                except Exception:
                    log.exception(
                        "loading %s version %s failed; keeping the current one", self.cfg.name, version
                    )
                    continue
                self._slots = {**self._slots, arm: LoadedModel(arm, alias, version, ranker)}
                changes.append(f"{arm}→{version}")
                log.info("serving %s version %s as %s", self.cfg.name, version, arm)
        return changes

    def get(self, arm: str) -> LoadedModel | None:
        slots = self._slots
        return slots.get(arm) or slots.get(CHAMPION)

    def versions(self) -> dict[str, str]:
        return {arm: m.version for arm, m in self._slots.items()}


class NoModelError(RuntimeError):
    pass


class Scorer:
    """Feature assembly + one forward per arm for a batch of requests."""

    def __init__(self, store: OnlineStore, slots: ModelSlots) -> None:
        self.store = store
        self.slots = slots

    def score(self, requests: list[ScoreRequest]) -> list[Scores]:
        """Scores for each request (per-task probabilities of its ``post_ids``, in that order), from one
        forward per model version among the requests' arms."""
        results: dict[int, Scores] = {}
        by_model: dict[int, list[int]] = {}
        models: dict[int, LoadedModel] = {}
        for i, r in enumerate(requests):
            m = self.slots.get(r.arm)
            if m is None:
                raise NoModelError(f"no version of {self.slots.cfg.name}@{self.slots.cfg.alias} is loaded")
            by_model.setdefault(id(m), []).append(i)
            models[id(m)] = m
        for key, idx in by_model.items():
            m = models[key]
            cols, features_ms = [], []
            for i in idx:
                t = time.perf_counter()
                cols.append(assemble(self.store, requests[i].viewer, requests[i].post_ids, requests[i].now_s))
                features_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            needed = m.ranker.input_columns
            merged = cols[0] if len(cols) == 1 else {c: _concat([col[c] for col in cols]) for c in needed}
            probs = m.ranker.predict(merged)  # task → (sum N,)
            forward_ms = (time.perf_counter() - t) * 1000
            bounds = np.cumsum([0, *[len(requests[i].post_ids) for i in idx]])
            for j, i in enumerate(idx):
                lo, hi = bounds[j], bounds[j + 1]
                results[i] = Scores(
                    probs={t: v[lo:hi].astype(np.float32) for t, v in probs.items()},
                    signals={s: cols[j][s] for s in SIGNALS if s in cols[j]},
                    arm=m.arm,
                    version=m.version,
                    timings_ms={"features": features_ms[j], "forward": forward_ms},
                )
        return [results[i] for i in range(len(requests))]


def _concat(parts: list[Any]) -> Any:
    if parts and isinstance(parts[0], Jagged):
        return Jagged.concat(parts)
    if parts and isinstance(parts[0], np.ndarray) and parts[0].dtype == object:
        out = np.empty(sum(len(p) for p in parts), dtype=object)
        out[:] = [x for p in parts for x in p]
        return out
    return np.concatenate(parts)
