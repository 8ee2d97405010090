"""The feed pipeline, independent of how it is hosted: retrieval → ranking → re-ranking → page, plus the
write paths (client events, new posts). :mod:`serve.app` hosts it in Ray Serve with ranking in its own
deployment; the benchmark hosts it in one uvicorn process with ranking in-process.

A feed request:

1. retrieval (:mod:`serve.retrieval`) over the replica's online store: visible friends' posts, newest first;
2. ranking: ``score(request)`` (the ``Ranker`` deployment's batched method, or a local scorer) within the
   latency budget ``ranking.timeout_s``; on failure or timeout the feed is reverse-chronological and says so;
3. re-ranking (:mod:`serve.reranking`): value model, freshness, fatigue, seen demotion, dedup, diversity,
   exploration;
4. the first page, a signed cursor to the next (the ranked list is kept ``feed.cursor_ttl_s``), and the
   served impressions appended to the serving log after the response is sent.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.tasks import TASKS, value_score
from pipelines.common import schema
from serve.config import ServeConfig
from serve.log import ServingLog
from serve.metrics import FeedMetrics
from serve.ranking import CHRONOLOGICAL, arm_of
from serve.reranking import RerankContext, SeenDemotion, Slate, rerank
from serve.retrieval import retrieve, visible
from serve.store import OnlineStore

log = logging.getLogger(__name__)

ScoreFn = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
ENGAGEMENT_TYPES = schema.ENGAGEMENT_TYPES


class FeedError(Exception):
    """A client error with its HTTP status (never a 5xx for bad input)."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(str(detail))
        self.status = status
        self.detail = detail


class Clock:
    """Serving time. ``snapshot`` mode starts at the online snapshot's ``as_of`` at wall time ``origin_s``."""

    def __init__(self, mode: str, as_of_s: float, origin_s: float | None) -> None:
        self.mode = mode
        self.offset = 0.0 if mode == "wall" else as_of_s - (origin_s if origin_s is not None else time.time())

    def now(self) -> float:
        return time.time() + self.offset


@dataclass
class Ranked:
    """One request's ranked list (final order), kept to serve its next pages; items are built per page."""

    viewer: int
    request_id: str
    created: float
    post_ids: np.ndarray
    scores: np.ndarray
    tags: list[tuple[str, ...]]
    probs: dict[str, np.ndarray]  # task → (N,) in final order; empty in a fallback feed
    signals: dict[str, np.ndarray]
    model: dict[str, Any]
    fallback: str | None
    timings_ms: dict[str, float]


def _snippet(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def _why(signals: dict[str, Any], j: int, tags: tuple[str, ...], fallback: bool) -> str:
    if fallback:
        return "Newest from your friends"
    if "exploration" in tags:
        return "Something new we think you may like"
    friends = float(np.expm1(signals["p_friend_actions_1d"][j])) if "p_friend_actions_1d" in signals else 0.0
    if friends >= 1:
        n = round(friends)
        return f"{n} of your friends engaged with this" if n > 1 else "A friend of yours engaged with this"
    if "ua_actions" in signals and float(np.expm1(signals["ua_actions"][j])) >= 2:
        return "You often interact with this friend"
    if "x_topic_match" in signals and float(signals["x_topic_match"][j]) >= 0.15:
        return "About topics you engage with"
    if "fresh" in tags:
        return "New from your friend"
    if "seen" in tags:
        return "You have seen this before"
    return "From your friend"


class FeedService:
    def __init__(
        self,
        cfg: ServeConfig,
        store: OnlineStore,
        serving_log: ServingLog,
        score: ScoreFn,
        clock: Clock,
        metrics: FeedMetrics,
        encode_text: Callable[[list[str]], np.ndarray] | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.log = serving_log
        self.score = score
        self.clock = clock
        self.metrics = metrics
        self._encode_text = encode_text
        self._pages: OrderedDict[str, Ranked] = OrderedDict()
        self._cursor_key = hashlib.sha256(
            b"cursor:" + (cfg.auth.secret or os.environ.get(cfg.auth.secret_env, "")).encode()
        ).digest()

    # ------------------------------------------------------------------------------------------- reads
    async def feed(self, viewer: int, limit: int | None, cursor: str | None) -> dict[str, Any]:
        limit = limit if limit is not None else self.cfg.feed.default_limit
        if limit > self.cfg.feed.max_limit:
            raise FeedError(400, f"limit {limit} is above the maximum of {self.cfg.feed.max_limit}")
        if not self.store.has_user(viewer):
            raise FeedError(404, f"unknown user {viewer}")
        if cursor:
            ranked, offset = self._resume(viewer, cursor)
        else:
            ranked, offset = await self._rank(viewer, limit), 0
        out_items = self._page(ranked, offset, limit)
        nxt = offset + len(out_items)
        served = self.clock.now()
        records = [
            {
                "kind": "impression",
                "id": it["impression_id"],
                "impression_id": it["impression_id"],
                "request_id": ranked.request_id,
                "viewer_id": viewer,
                "post_id": it["post_id"],
                "served_at_ms": int(served * 1000),
                "position": it["position"],
                "arm": ranked.model["arm"],
                "model_version": ranked.model.get("version"),
                "fallback": ranked.fallback is not None,
            }
            for it in out_items
        ]
        return {
            "user_id": viewer,
            "request_id": ranked.request_id,
            "served_at": dt.datetime.fromtimestamp(served, dt.UTC).isoformat(timespec="milliseconds"),
            "items": out_items,
            "next_cursor": self._cursor(viewer, ranked.request_id, nxt)
            if nxt < len(ranked.post_ids)
            else None,
            "model": ranked.model,
            "fallback": ranked.fallback is not None,
            "fallback_reason": ranked.fallback,
            "_impressions": records,
            "_timings_ms": ranked.timings_ms if offset == 0 else {},
        }

    def _page(self, ranked: Ranked, offset: int, limit: int) -> list[dict[str, Any]]:
        """The response items of positions ``[offset, offset + limit)``."""
        ids = ranked.post_ids[offset : offset + limit]
        post = self.store.posts(ids, ("author_id", "created_s", "modality", "text"))
        newest_first = ranked.fallback is not None or ranked.model["arm"] == CHRONOLOGICAL
        items = []
        for j, pid in enumerate(ids.tolist()):
            k = offset + j
            probs = ranked.probs
            items.append(
                {
                    "post_id": int(pid),
                    "author_id": int(post["author_id"][j]),
                    "created_at": dt.datetime.fromtimestamp(float(post["created_s"][j]), dt.UTC).isoformat(),
                    "modality": str(post["modality"][j]),
                    "text": _snippet(str(post["text"][j]), self.cfg.feed.snippet_chars),
                    "score": float(ranked.scores[k]),
                    "probabilities": {t: float(probs[t][k]) for t in TASKS if t != "dwell"}
                    if probs
                    else None,
                    "expected_dwell_s": float(probs["dwell"][k]) / 1000.0 if probs else None,
                    "why": _why(ranked.signals, k, ranked.tags[k], newest_first),
                    "tags": list(ranked.tags[k]),
                    "position": k,
                    "impression_id": f"{ranked.request_id}:{k}",
                }
            )
        return items

    async def _rank(self, viewer: int, limit: int) -> Ranked:
        t0 = time.perf_counter()
        now = self.clock.now()
        request_id = uuid.uuid4().hex
        cands = retrieve(self.store, viewer, now, self.cfg.retrieval)
        t1 = time.perf_counter()
        self.metrics.stage("retrieval", (t1 - t0) * 1000)
        arm = arm_of(viewer, self.cfg.model.challenger_traffic, self.cfg.model.chronological_traffic)
        model: dict[str, Any] = {"name": self.cfg.model.name, "arm": arm, "version": None}
        fallback: str | None = None
        result: dict[str, Any] | None = None
        if len(cands.post_ids) and arm != CHRONOLOGICAL:  # the holdout arm is never ranked
            try:
                result = await asyncio.wait_for(
                    self.score({"viewer": viewer, "post_ids": cands.post_ids, "now_s": now, "arm": arm}),
                    timeout=self.cfg.ranking.timeout_s,
                )
                model.update(arm=result["arm"], version=result["version"])
            except TimeoutError:
                fallback = "timeout"
            except Exception as e:  # the ranker is down or failed: the feed still comes back
                log.warning("ranking failed (%s: %s); serving reverse-chronological", type(e).__name__, e)
                fallback = "ranker_error"
        t2 = time.perf_counter()
        self.metrics.stage("ranking", (t2 - t1) * 1000)
        post = self.store.posts(cands.post_ids, ("author_id", "created_s", "text_hash"))
        n = len(cands.post_ids)
        if result is not None:
            probs = result["probs"]
            scores = np.asarray(value_score(probs, self.cfg.feed.value_weights), np.float64)
            signals = result["signals"]
        else:
            probs, signals = {}, {}
            scores = post["created_s"].astype(np.float64) if n else np.zeros(0)
        slate = Slate(
            post_id=cands.post_ids,
            author_id=post["author_id"],
            created_s=post["created_s"].astype(np.float64),
            text_hash=post["text_hash"],
            score=scores,
            seen=cands.seen,
            reasons=[()] * n,
        )
        state = cands.viewer if cands.viewer is not None else self.store.viewer(viewer)
        ctx = RerankContext(
            now_s=now,
            hidden_authors=state.hidden_authors,
            seed=int(request_id[:8], 16),
            limit=limit,
        )
        if result is not None:
            slate = rerank(slate, ctx, self.cfg.rerank)
        else:  # reverse-chronological, seen posts still after unseen ones
            order = np.argsort(-slate.score, kind="stable")
            slate = SeenDemotion(mode=self.cfg.rerank.seen.mode).apply(slate.take(order), ctx)
        t3 = time.perf_counter()
        self.metrics.stage("rerank", (t3 - t2) * 1000)
        by_id = np.argsort(cands.post_ids)  # where each re-ranked post sat in the scored arrays
        order = by_id[np.searchsorted(cands.post_ids, slate.post_id, sorter=by_id)]
        if fallback:
            self.metrics.fallback(fallback)
        self.metrics.served_version(model["arm"], model["version"])
        self.metrics.request(model["arm"], "fallback" if fallback else "ranked", n)
        t4 = time.perf_counter()
        self.metrics.stage("total", (t4 - t0) * 1000)
        timings = {"retrieval": t1 - t0, "ranking": t2 - t1, "rerank": t3 - t2, "total": t4 - t0}
        ranked = Ranked(
            viewer=viewer,
            request_id=request_id,
            created=time.time(),
            post_ids=slate.post_id,
            scores=slate.score,
            tags=slate.reasons,
            probs={t: np.asarray(v)[order] for t, v in probs.items()},
            signals={k: np.asarray(v)[order] for k, v in signals.items()},
            model=model,
            fallback=fallback,
            timings_ms={k: v * 1000 for k, v in timings.items()},
        )
        self._remember(ranked)
        return ranked

    # ------------------------------------------------------------------------------------------ cursors
    def _cursor(self, viewer: int, request_id: str, offset: int) -> str:
        body = (
            base64.urlsafe_b64encode(json.dumps([viewer, request_id, offset]).encode()).decode().rstrip("=")
        )
        sig = hmac.new(self._cursor_key, body.encode(), hashlib.sha256).hexdigest()[:32]
        return f"{body}.{sig}"

    def _resume(self, viewer: int, cursor: str) -> tuple[Ranked, int]:
        try:
            body, sig = cursor.rsplit(".", 1)
            good = hmac.new(self._cursor_key, body.encode(), hashlib.sha256).hexdigest()[:32]
            if not hmac.compare_digest(sig, good):
                raise ValueError("bad signature")
            owner, request_id, offset = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (ValueError, TypeError) as e:
            raise FeedError(400, f"invalid cursor ({e})") from None
        if owner != viewer:
            raise FeedError(403, "this cursor belongs to another user")
        ranked = self._pages.get(request_id)
        if ranked is None or time.time() - ranked.created > self.cfg.feed.cursor_ttl_s:
            raise FeedError(410, "this cursor has expired; request the feed again without a cursor")
        return ranked, int(offset)

    def _remember(self, ranked: Ranked) -> None:
        self._pages[ranked.request_id] = ranked
        cutoff = time.time() - self.cfg.feed.cursor_ttl_s
        while self._pages and (
            len(self._pages) > 10_000 or next(iter(self._pages.values())).created < cutoff
        ):
            self._pages.popitem(last=False)

    # ------------------------------------------------------------------------------------------ writes
    def publish(self, records: list[dict[str, Any]]) -> None:
        """Durably log, then apply to this replica's store (other replicas: through the log or Redis)."""
        if records:
            self.log.append(records)
            self.store.apply(records)

    async def log_impressions(self, records: list[dict[str, Any]]) -> None:
        """After the response: queue the served impressions for the log writer (group commit, off the
        request path) and mark them seen in this replica's store."""
        if records:
            n = len(records)

            def written(done: Future[None]) -> None:
                if done.exception() is not None:  # logged by the writer; counted here
                    self.metrics.event("impressions_lost", n)

            self.log.submit(records).add_done_callback(written)
            self.store.apply(records)

    def events(self, viewer: int, events: list[dict[str, Any]]) -> dict[str, Any]:
        """Validate a whole batch; store all of it or none (422 with every problem)."""
        if not self.store.has_user(viewer):
            raise FeedError(404, f"unknown user {viewer}")
        if len(events) > self.cfg.feed.max_events_per_request:
            raise FeedError(413, f"at most {self.cfg.feed.max_events_per_request} events per request")
        now = self.clock.now()
        post_ids = np.array([e["post_id"] for e in events], np.int64)
        post = self.store.posts(post_ids, ("author_id", "visibility", "deleted_s"))
        friends, since = self.store.friends(viewer)
        friend_set = set(friends[since < now].tolist())
        blocked = set(self.store.blocked_with(viewer).tolist())
        errors: list[dict[str, Any]] = []
        records: list[dict[str, Any]] = []
        ids_seen: set[str] = set()

        def bad(i: int, field: str, msg: str) -> None:
            errors.append({"index": i, "field": field, "error": msg})

        for i, e in enumerate(events):
            at = e.get("at")
            at_s = at.timestamp() if at is not None else now
            if not post["found"][i]:
                bad(i, "post_id", f"unknown post {e['post_id']}")
            elif not visible(
                viewer,
                int(post["author_id"][i]),
                str(post["visibility"][i]),
                not np.isnan(post["deleted_s"][i]),
                friend_set,
                blocked,
            ):
                bad(i, "post_id", f"post {e['post_id']} is not visible to user {viewer}")
            if at_s > now + self.cfg.feed.max_clock_skew_s:
                bad(i, "at", "in the future")
            elif at_s < now - self.cfg.feed.max_event_age_s:
                bad(i, "at", f"older than {self.cfg.feed.max_event_age_s:.0f} s")
            kind = e["type"]
            if kind == "view" and e.get("dwell_ms") is None:
                bad(i, "dwell_ms", "a view needs dwell_ms")
            if kind not in ("view",) and e.get("dwell_ms") is not None:
                bad(i, "dwell_ms", "only a view carries dwell_ms")
            if kind == "impression" and (
                e.get("impression_id") is None or e.get("request_id") is None or e.get("position") is None
            ):
                bad(i, "impression_id", "an impression needs impression_id, request_id and position")
            event_id = (
                e.get("event_id")
                or (e.get("impression_id") if kind == "impression" else None)
                or uuid.uuid4().hex
            )
            if event_id in ids_seen:
                bad(i, "event_id", f"duplicate id {event_id!r} in this request")
            ids_seen.add(event_id)
            ms = int(at_s * 1000)
            if kind == "impression":
                records.append(
                    {
                        "kind": "impression",
                        "id": event_id,
                        "impression_id": event_id,
                        "request_id": e["request_id"],
                        "viewer_id": viewer,
                        "post_id": e["post_id"],
                        "served_at_ms": ms,
                        "position": e["position"],
                        "source": "client",
                    }
                )
            else:
                records.append(
                    {
                        "kind": "engagement",
                        "id": event_id,
                        "event_id": event_id,
                        "viewer_id": viewer,
                        "post_id": e["post_id"],
                        "impression_id": e.get("impression_id"),
                        "type": kind,
                        "at_ms": ms,
                        "dwell_ms": e.get("dwell_ms"),
                    }
                )
        if errors:
            self.metrics.event("rejected", len(events))
            raise FeedError(
                422, {"message": f"{len(errors)} problem(s); nothing was stored", "errors": errors}
            )
        self.publish(records)
        self.metrics.event("accepted", len(records))
        return {"accepted": len(records), "event_ids": [r["id"] for r in records]}

    def create_post(self, author: int, post: dict[str, Any]) -> dict[str, Any]:
        if not self.store.has_user(author):
            raise FeedError(404, f"unknown user {author}")
        if self._encode_text is None:
            raise FeedError(503, "this replica does not accept posts (no text encoder)")
        now = self.clock.now()
        post_id = (int(time.time() * 1000) << 20) | int.from_bytes(os.urandom(3), "little") & 0xFFFFF
        emb = self._encode_text([post.get("text") or ""])[0]
        record = {
            "kind": "post",
            "id": f"post:{post_id}",
            "post_id": post_id,
            "author_id": author,
            "created_at_ms": int(now * 1000),
            "modality": post["modality"],
            "text": post.get("text"),
            "topics": post.get("topics") or [],
            "visibility": post["visibility"],
            "deleted_at": None,
            "media_duration_s": post.get("media_duration_s"),
            "media_vector": post.get("media_vector"),
            "text_emb": [float(x) for x in emb],
        }
        self.publish([record])
        return {"post_id": post_id, "created_at": dt.datetime.fromtimestamp(now, dt.UTC).isoformat()}
