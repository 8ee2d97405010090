"""The feed pipeline, independent of how it is hosted: retrieval → ranking → re-ranking → page, plus the
write paths (client events, new posts). :mod:`serve.app` hosts it in Ray Serve (the model in each ingress
replica, or in a ``Ranker`` deployment behind a handle); the benchmark hosts it in one uvicorn process with
ranking in-process.

A feed request:

1. retrieval (:mod:`serve.retrieval`) over the replica's online store: visible friends' posts, newest first,
   and (with a registered retriever) strangers' public posts from its index (:mod:`serve.index`); over
   ``ranking.max_candidates`` in all, pre-ranking keeps the best by two-tower score;
2. ranking: ``score(ScoreRequest)`` (batched with concurrent feeds by ``@serve.batch``, here or in the
   ``Ranker`` deployment) within the latency budget ``ranking.timeout_s``; on failure or timeout the feed
   is reverse-chronological and says so;
3. re-ranking (:mod:`serve.reranking`): value model, freshness, fatigue, seen demotion, dedup, diversity,
   exploration;
4. the first page, a signed cursor to the next (the ranked list is kept ``feed.cursor_ttl_s``), and the
   served impressions appended to the serving log after the response is sent.

The records it takes and returns are in :mod:`serve.records`.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.tasks import TASKS, value_score
from pipelines.ingest.rules import Rules
from serve.config import ServeConfig
from serve.index import RetrieverSlot
from serve.log import ServingLog
from serve.metrics import FeedMetrics
from serve.ranking import CHRONOLOGICAL, FRIENDS_ONLY, arm_of, retrieval_arm_of
from serve.records import (
    ClientEvent,
    Engagement,
    EventsAccepted,
    FeedItem,
    FeedResult,
    LogEntry,
    NewPost,
    PostCreated,
    PostDraft,
    ReportedImpression,
    ScoreRequest,
    Scores,
    ServedImpression,
    ServedModel,
)
from serve.reranking import RerankContext, SeenDemotion, Slate, rerank
from serve.retrieval import Candidates, retrieve, visible, with_suggestions
from serve.store import OnlineStore
from serve.validation import ImpressionSigner, contract_problems, references

log = logging.getLogger(__name__)

ScoreFn = Callable[[ScoreRequest], Awaitable[Scores]]
#: The Retriever deployment's step (``retrieval.placement: deployment``): (viewer, now, friends' candidates,
#: suggest or not) → what the ranker scores (:func:`serve.retrieval.with_suggestions` over its own index).
SuggestFn = Callable[[int, float, Candidates, bool], Awaitable[Candidates]]
#: At most this many problems are listed in a 422.
MAX_PROBLEMS = 50
#: One problem of a rejected event batch: ``{"index": i, "field": name, "error": message}`` (the 422 body).
Problem = dict[str, int | str]


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
    post_ids: np.ndarray  # (N,) int64
    scores: np.ndarray  # (N,) float64
    #: What re-ranking did to each item, as codes into ``tag_sets`` (its few distinct tag tuples): kept
    #: lists hold no per-item Python objects, so the garbage collector's full passes (which Ray triggers
    #: in a thread, holding the GIL) stay short however many lists the cursor cache keeps.
    tag_codes: np.ndarray  # (N,) int16
    tag_sets: tuple[tuple[str, ...], ...]
    suggested: np.ndarray  # (N,) bool: out-of-network
    probs: dict[str, np.ndarray]  # task → (N,) in final order; empty in a fallback feed
    signals: dict[str, np.ndarray]
    model: ServedModel
    fallback: str | None
    timings_ms: dict[str, float]

    def tags(self, k: int) -> tuple[str, ...]:
        """What re-ranking did to item ``k``."""
        return self.tag_sets[int(self.tag_codes[k])]


def _tag_codes(reasons: list[tuple[str, ...]]) -> dict[str, Any]:
    """``Ranked``'s ``tag_codes`` and ``tag_sets`` for per-item tag tuples."""
    distinct: dict[tuple[str, ...], int] = {}
    codes = np.fromiter((distinct.setdefault(r, len(distinct)) for r in reasons), np.int16, len(reasons))
    return {"tag_codes": codes, "tag_sets": tuple(distinct)}


#: What a page shows of each post.
PAGE_COLUMNS = ("author_id", "created_s", "modality", "text", "topic_codes", "n_topics")


def _snippet(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def _why(
    signals: dict[str, np.ndarray], j: int, tags: tuple[str, ...], fallback: bool, suggested: bool
) -> str:
    if fallback:
        return "Newest from your friends"
    if suggested:
        if "x_topic_match" in signals and float(signals["x_topic_match"][j]) >= 0.15:
            return "Suggested for you: about topics you engage with"
        return "Suggested for you"
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


def _event_problems(e: ClientEvent) -> list[tuple[str, str]]:
    """(field, message) for what the API asks of one event beyond the contract (which checks times,
    references and ranges: :mod:`serve.validation`)."""
    out = []
    if e.type not in ("view",) and e.dwell_ms is not None:
        out.append(("dwell_ms", "only a view carries dwell_ms"))
    if e.type == "impression" and (e.impression_id is None or e.request_id is None or e.position is None):
        out.append(("impression_id", "an impression needs impression_id, request_id and position"))
    return out


def _event_record(viewer: int, e: ClientEvent, event_id: str, now: float) -> Engagement | ReportedImpression:
    """The log record of an event (a reported impression's id is its impression id)."""
    ms = int(e.at_s(now) * 1000)
    if e.type == "impression":
        return ReportedImpression(
            e.impression_id or event_id, e.request_id or "", viewer, e.post_id, ms, e.position or 0
        )
    return Engagement(event_id, viewer, e.post_id, e.impression_id, e.type, ms, e.dwell_ms)


class FeedService:
    """The feed of one replica: reads (ranked pages) and writes (client events, new posts).

    It owns the replica's view of the world it was given — the online store, the serving log's writer, the
    scoring function, the serving clock and the metrics — plus the ranked lists behind live cursors (an
    LRU of at most 10,000 requests, each kept ``feed.cursor_ttl_s``) and the cursor signing key (derived
    from the JWT secret, so every replica signs alike).

    Request path of :meth:`feed` (authentication and authorization happen before, in :mod:`serve.api`):
    retrieval (:func:`serve.retrieval.retrieve`) → ranking (``score``, within ``ranking.timeout_s``; on
    failure or timeout reverse-chronological with ``fallback``; the chronological holdout arm skips it) →
    re-ranking (:func:`serve.reranking.rerank`) → the page and a signed cursor to the next → the served
    impressions, which the caller hands to :meth:`log_impressions` once the response is sent. A cursor's
    page resumes the kept list and ranks nothing. Impression ids are signed with their viewer and post.
    :meth:`events` validates a whole batch (the ingest contract's rules, :mod:`serve.validation`) and
    stores all of it or none, each event id once; :meth:`create_post` checks the post by the same rules,
    embeds the text and stores it. Both write through :meth:`publish`:
    durably to the serving log, then to this replica's store (other replicas learn it from the log, or at
    once through Redis).

    Threading: :meth:`feed` and :meth:`log_impressions` are coroutines on the replica's event loop; only
    ``score`` awaits (it may run a ``@serve.batch`` across concurrent feeds or call the ``Ranker``
    deployment). :meth:`events` and :meth:`create_post` are blocking (FastAPI runs them in its thread pool)
    and wait for the log's fsync. The store and the log are thread-safe; the cursor cache is only touched
    from the event loop.

    Tests inject every collaborator: a :class:`serve.store.EmbeddedStore` (or ``RedisStore``) over a tiny
    world, a ``ServingLog`` in a temporary directory, a fake ``score`` coroutine (constant
    :class:`serve.records.Scores`, or one slower than ``ranking.timeout_s``), a :class:`Clock` and
    ``FeedMetrics(enabled=False)``; the deployed app (``tests/serving/conftest.py``) builds it in
    ``serve.app.FeedIngress`` with the real scorer.
    """

    def __init__(
        self,
        cfg: ServeConfig,
        store: OnlineStore,
        serving_log: ServingLog,
        score: ScoreFn,
        clock: Clock,
        metrics: FeedMetrics,
        encode_text: Callable[[list[str]], np.ndarray] | None = None,
        retriever: RetrieverSlot | None = None,
        suggest_remote: SuggestFn | None = None,
    ) -> None:
        self.cfg = cfg
        self.retriever = retriever
        self.suggest_remote = suggest_remote
        self.store = store
        self.log = serving_log
        self.score = score
        self.clock = clock
        self.metrics = metrics
        self._encode_text = encode_text
        self._pages: OrderedDict[str, Ranked] = OrderedDict()
        secret = (cfg.auth.secret or os.environ.get(cfg.auth.secret_env, "")).encode()
        self._cursor_key = hashlib.sha256(b"cursor:" + secret).digest()
        self._signer = ImpressionSigner(secret)  # every replica signs alike
        #: topic code → name (the features' vocabulary; a topic it does not know has no name to show)
        self._topic_names = {code: name for name, code in store.vocab.get("topic", {}).items() if code}
        self._claims = threading.Lock()
        self._pending: set[str] = set()  # record ids being written by a request of this replica

    # ------------------------------------------------------------------------------------------- reads
    async def feed(self, viewer: int, limit: int | None, cursor: str | None) -> FeedResult:
        limit = limit if limit is not None else self.cfg.feed.default_limit
        if limit > self.cfg.feed.max_limit:
            raise FeedError(400, f"limit {limit} is above the maximum of {self.cfg.feed.max_limit}")
        if not self.store.has_user(viewer):
            raise FeedError(404, f"unknown user {viewer}")
        if cursor:
            ranked, offset = self._resume(viewer, cursor)
        else:
            ranked, offset = await self._rank(viewer, limit), 0
        items = self._page(ranked, offset, limit)
        nxt = offset + len(items)
        served = self.clock.now()
        return FeedResult(
            user_id=viewer,
            request_id=ranked.request_id,
            served_at=dt.datetime.fromtimestamp(served, dt.UTC).isoformat(timespec="milliseconds"),
            items=items,
            next_cursor=self._cursor(viewer, ranked.request_id, nxt) if nxt < len(ranked.post_ids) else None,
            model=ranked.model,
            fallback=ranked.fallback is not None,
            fallback_reason=ranked.fallback,
            impressions=[_served(ranked, it, int(served * 1000)) for it in items],
            timings_ms=ranked.timings_ms if offset == 0 else {},
        )

    def _page(self, ranked: Ranked, offset: int, limit: int) -> list[FeedItem]:
        """The response items of positions ``[offset, offset + limit)``."""
        ids = ranked.post_ids[offset : offset + limit]
        post = self.store.posts(ids, PAGE_COLUMNS)
        newest_first = ranked.fallback is not None or ranked.model.arm == CHRONOLOGICAL
        probs = ranked.probs
        on_page = {t: v[offset : offset + len(ids)] for t, v in probs.items()}
        value = value_score(on_page, self.cfg.feed.value_weights) if probs else None
        names, codes, n_topics = self._topic_names, post["topic_codes"], post["n_topics"]
        items = []
        for j, pid in enumerate(ids.tolist()):
            k = offset + j
            items.append(
                FeedItem(
                    post_id=int(pid),
                    author_id=int(post["author_id"][j]),
                    created_at=dt.datetime.fromtimestamp(float(post["created_s"][j]), dt.UTC).isoformat(),
                    modality=str(post["modality"][j]),
                    text=_snippet(str(post["text"][j]), self.cfg.feed.snippet_chars),
                    topics=[names[c] for c in codes[j, : n_topics[j]].tolist() if c in names],
                    score=float(ranked.scores[k]),
                    value=float(value[j]) if value is not None else None,
                    probabilities={t: float(probs[t][k]) for t in TASKS if t != "dwell"} if probs else None,
                    expected_dwell_s=float(probs["dwell"][k]) / 1000.0 if probs else None,
                    why=_why(ranked.signals, k, ranked.tags(k), newest_first, bool(ranked.suggested[k])),
                    tags=list(ranked.tags(k)),
                    position=k,
                    impression_id=self._signer.sign(ranked.request_id, k, ranked.viewer, int(pid)),
                    source="suggested" if ranked.suggested[k] else "friends",
                )
            )
        return items

    async def _rank(self, viewer: int, limit: int) -> Ranked:
        """Retrieve, score and re-rank a first page's whole list; keep it for the cursor."""
        t0 = time.perf_counter()
        now = self.clock.now()
        request_id = uuid.uuid4().hex
        cands = retrieve(self.store, viewer, now, self.cfg.retrieval)
        arm = arm_of(viewer, self.cfg.model.challenger_traffic, self.cfg.model.chronological_traffic)
        retrieval_arm = retrieval_arm_of(viewer, self.cfg.retrieval.holdout_traffic)
        if arm != CHRONOLOGICAL:  # never ranked: newest first, friends' posts only
            cands = await self._candidates(viewer, now, cands, suggest=retrieval_arm != FRIENDS_ONLY)
        t1 = time.perf_counter()
        self.metrics.stage("retrieval", (t1 - t0) * 1000)
        scores, fallback = await self._score(ScoreRequest(viewer, cands.post_ids, now, arm))
        if scores is None and cands.suggested.any():  # newest first is friends' posts only
            cands = cands.take(np.flatnonzero(~cands.suggested))
        t2 = time.perf_counter()
        self.metrics.stage("ranking", (t2 - t1) * 1000)
        state = cands.viewer if cands.viewer is not None else self.store.viewer(viewer)
        ctx = RerankContext(
            now_s=now, hidden_authors=state.hidden_authors, seed=int(request_id[:8], 16), limit=limit
        )
        slate = self._rerank(cands, scores, ctx)
        t3 = time.perf_counter()
        self.metrics.stage("rerank", (t3 - t2) * 1000)
        by_id = np.argsort(cands.post_ids)  # where each re-ranked post sat in the scored arrays
        order = by_id[np.searchsorted(cands.post_ids, slate.post_id, sorter=by_id)]
        if scores is not None:
            model = ServedModel(self.cfg.model.name, scores.arm, scores.version, retrieval_arm)
            probs, signals = scores.probs, scores.signals
        else:
            model, probs, signals = ServedModel(self.cfg.model.name, arm, None, retrieval_arm), {}, {}
        self._count(model, fallback, len(cands.post_ids))
        t4 = time.perf_counter()
        self.metrics.stage("total", (t4 - t0) * 1000)
        timings = {"retrieval": t1 - t0, "ranking": t2 - t1, "rerank": t3 - t2, "total": t4 - t0}
        if scores is not None:  # the ranking stage's parts: feature assembly and the (batched) forward
            timings |= {k: v / 1000 for k, v in scores.timings_ms.items()}
            for k, v in scores.timings_ms.items():
                self.metrics.stage(k, v)
        ranked = Ranked(
            viewer=viewer,
            request_id=request_id,
            created=time.time(),
            post_ids=slate.post_id,
            scores=slate.score,
            **_tag_codes(slate.reasons),
            suggested=slate.suggested,
            probs={t: np.asarray(v)[order] for t, v in probs.items()},
            signals={k: np.asarray(v)[order] for k, v in signals.items()},
            model=model,
            fallback=fallback,
            timings_ms={k: v * 1000 for k, v in timings.items()},
        )
        self._remember(ranked)
        return ranked

    async def _score(self, request: ScoreRequest) -> tuple[Scores | None, str | None]:
        """The ranker's scores, or None and why the feed falls back (no reason: nothing to rank, or the
        chronological holdout arm, which is never ranked)."""
        if not len(request.post_ids) or request.arm == CHRONOLOGICAL:
            return None, None
        try:
            return await asyncio.wait_for(self.score(request), timeout=self.cfg.ranking.timeout_s), None
        except TimeoutError:
            return None, "timeout"
        except Exception as e:  # the ranker is down or failed: the feed still comes back
            log.warning("ranking failed (%s: %s); serving reverse-chronological", type(e).__name__, e)
            return None, "ranker_error"

    async def _candidates(self, viewer: int, now: float, friends: Candidates, suggest: bool) -> Candidates:
        """What the ranker scores (:func:`serve.retrieval.with_suggestions`): friends' posts and, with
        ``suggest``, the retriever's suggestions, pre-ranked to ``ranking.max_candidates``; here, or in the
        Retriever deployment (``suggest_remote``, within ``retrieval.timeout_s``). On an error or timeout
        the newest friends' posts within the budget (counted, logged)."""
        cfg = self.cfg
        budget = cfg.ranking.max_candidates
        try:
            if self.suggest_remote is not None:
                return await asyncio.wait_for(
                    self.suggest_remote(viewer, now, friends, suggest), cfg.retrieval.timeout_s
                )
            index = self.retriever.current if self.retriever is not None else None
            share = cfg.rerank.suggested.max_share
            r = cfg.retrieval
            return with_suggestions(self.store, viewer, now, r, budget, index, friends, suggest, share)
        except Exception as e:  # TimeoutError included: the feed goes on with friends' posts
            log.warning("out-of-network retrieval failed (%s: %s); friends' posts only", type(e).__name__, e)
            self.metrics.event("retrieval_errors", 1)
            return friends.take(np.arange(min(len(friends.post_ids), budget)))

    def _rerank(self, cands: Candidates, scores: Scores | None, ctx: RerankContext) -> Slate:
        """The candidates in final order: by value and re-ranked, or (no scores) newest first with seen
        posts still after unseen ones."""
        post = self.store.posts(cands.post_ids, ("author_id", "created_s", "text_hash"))
        n = len(cands.post_ids)
        if scores is not None:
            value = np.asarray(value_score(scores.probs, self.cfg.feed.value_weights), np.float64)
        else:
            value = post["created_s"].astype(np.float64) if n else np.zeros(0)
        slate = Slate(
            post_id=cands.post_ids,
            author_id=post["author_id"],
            created_s=post["created_s"].astype(np.float64),
            text_hash=post["text_hash"],
            score=value,
            seen=cands.seen,
            reasons=[()] * n,
            suggested=cands.suggested,
        )
        if scores is not None:
            return rerank(slate, ctx, self.cfg.rerank)
        order = np.argsort(-slate.score, kind="stable")
        return SeenDemotion(mode=self.cfg.rerank.seen.mode).apply(slate.take(order), ctx)

    def _count(self, model: ServedModel, fallback: str | None, n_candidates: int) -> None:
        if fallback:
            self.metrics.fallback(fallback)
        self.metrics.served_version(model.arm, model.version)
        self.metrics.request(model.arm, "fallback" if fallback else "ranked", n_candidates)

    # ------------------------------------------------------------------------------------------ cursors
    def _cursor(self, viewer: int, request_id: str, offset: int) -> str:
        body = (
            base64.urlsafe_b64encode(json.dumps([viewer, request_id, offset]).encode()).decode().rstrip("=")
        )
        sig = hmac.new(self._cursor_key, body.encode(), hashlib.sha256).hexdigest()[:32]
        return f"{body}.{sig}"

    def _resume(self, viewer: int, cursor: str) -> tuple[Ranked, int]:
        """The kept list and the offset a cursor points at: 400 unless it is one this feed signed, of
        the shape it signs (``[viewer, request id, offset]``, offset ≥ 0); 403 another user's; 410 gone."""
        try:
            body, sig = cursor.rsplit(".", 1)
            good = hmac.new(self._cursor_key, body.encode(), hashlib.sha256).hexdigest()[:32]
            if not hmac.compare_digest(sig.encode(), good.encode()):
                raise ValueError("bad signature")
            payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            owner, request_id, offset = payload
            if not (type(owner) is int and type(request_id) is str and type(offset) is int and offset >= 0):
                raise ValueError("bad fields")
        except (ValueError, TypeError, UnicodeError) as e:
            raise FeedError(400, f"invalid cursor ({e})") from None
        if owner != viewer:
            raise FeedError(403, "this cursor belongs to another user")
        ranked = self._pages.get(request_id)
        if ranked is None or time.time() - ranked.created > self.cfg.feed.cursor_ttl_s:
            raise FeedError(410, "this cursor has expired; request the feed again without a cursor")
        if offset > len(ranked.post_ids):
            raise FeedError(400, "invalid cursor (offset past the end)")
        return ranked, offset

    def _remember(self, ranked: Ranked) -> None:
        self._pages[ranked.request_id] = ranked
        cutoff = time.time() - self.cfg.feed.cursor_ttl_s
        while self._pages and (
            len(self._pages) > 10_000 or next(iter(self._pages.values())).created < cutoff
        ):
            self._pages.popitem(last=False)

    # ------------------------------------------------------------------------------------------ writes
    def publish(self, records: Sequence[LogEntry]) -> None:
        """Durably log, then apply to this replica's store (other replicas: through the log or Redis)."""
        if records:
            rows = [r.log_record() for r in records]
            self.log.append(rows)
            self.store.apply(rows)

    async def log_impressions(self, impressions: Sequence[ServedImpression]) -> None:
        """After the response: queue the served impressions for the log writer (group commit, off the
        request path) and mark them seen in this replica's store."""
        if impressions:
            n = len(impressions)
            rows = [r.log_record() for r in impressions]

            def written(done: Future[None]) -> None:
                if done.exception() is not None:  # logged by the writer; counted here
                    self.metrics.event("impressions_lost", n)

            self.log.submit(rows).add_done_callback(written)
            self.store.apply(rows)

    def events(
        self, viewer: int, events: Sequence[ClientEvent], idempotency_key: str | None = None
    ) -> EventsAccepted:
        """Validate a whole batch (422 with every problem, nothing stored); store what is new, once.

        An event whose id this feed has stored before for this viewer is acknowledged in ``duplicates``
        and not stored again: ids are claimed under a lock against this replica's concurrent requests and
        checked against the online store, which holds every record since the snapshot, this replica's and
        (through the log or Redis) the others'. An event without ``event_id`` gets
        ``<idempotency_key>:<index>`` when the request has an ``Idempotency-Key`` (a replayed request, e.g.
        retried by the load balancer after a replica died, is then a duplicate), else a random id. A
        reported impression of an item the feed served is always a duplicate: the feed logged it already.
        """
        if not self.store.has_user(viewer):
            raise FeedError(404, f"unknown user {viewer}")
        if len(events) > self.cfg.feed.max_events_per_request:
            raise FeedError(413, f"at most {self.cfg.feed.max_events_per_request} events per request")
        now = self.clock.now()
        event_ids = [
            e.event_id
            or (e.impression_id if e.type == "impression" else None)
            or (f"{idempotency_key}:{i}" if idempotency_key else uuid.uuid4().hex)
            for i, e in enumerate(events)
        ]
        records = [_event_record(viewer, e, i, now) for e, i in zip(events, event_ids, strict=True)]
        problems = self._check_events(viewer, events, event_ids, records, now)
        if problems:
            self.metrics.event("rejected", len(events))
            raise FeedError(
                422,
                {
                    "message": f"{len(problems)} problem(s); nothing was stored",
                    "errors": problems[:MAX_PROBLEMS],  # the first ones: a short answer to a huge batch
                },
            )
        rows = [r.log_record() for r in records]
        with self._claims:
            ids = [row["id"] for row in rows]
            stored = self.store.applied(ids)
            taken = [
                bool(old) or i in self._pending or e.type == "impression"  # served impressions are logged
                for i, old, e in zip(ids, stored, events, strict=True)
            ]
            fresh = [r for r, t in zip(records, taken, strict=True) if not t]
            claimed = {i for i, t in zip(ids, taken, strict=True) if not t}
            self._pending |= claimed
        try:
            self.publish(fresh)
        finally:
            with self._claims:
                self._pending -= claimed
        duplicates = [i for i, t in zip(event_ids, taken, strict=True) if t]
        self.metrics.event("accepted", len(fresh))
        if duplicates:
            self.metrics.event("duplicate", len(duplicates))
        return EventsAccepted(accepted=len(fresh), event_ids=event_ids, duplicates=duplicates)

    def _check_events(
        self,
        viewer: int,
        events: Sequence[ClientEvent],
        event_ids: Sequence[str],
        records: Sequence[Engagement | ReportedImpression],
        now: float,
    ) -> list[Problem]:
        """Every problem of the batch, in event order: the contract's rules on the records it would store
        (:mod:`serve.validation`), the post's visibility, the API's own rules and repeated ids."""
        post_ids = np.array([e.post_id for e in events], np.int64)
        post = self.store.posts(post_ids, ("author_id", "visibility", "deleted_s", "created_s"))
        found = np.asarray(post["found"], bool)
        owned = [  # impressions this feed served to this viewer for this post (signed ids)
            (e.impression_id, viewer, e.post_id)
            for e in events
            if e.impression_id is not None and self._signer.verify(e.impression_id, viewer, e.post_id)
        ]
        refs = references([viewer], post_ids[found], post["created_s"][found], owned)
        rules = Rules(
            min_ts_ms=int((now - self.cfg.feed.max_event_age_s) * 1000),
            max_ts_ms=int((now + self.cfg.feed.max_clock_skew_s) * 1000),
        )
        contract = contract_problems([r.log_record() for r in records], refs, rules)
        visibility = self._visibility(viewer, events, post, now)
        owned_ids = {i for i, _, _ in owned}
        problems: list[Problem] = []
        taken: set[str] = set()
        for i, (e, event_id) in enumerate(zip(events, event_ids, strict=True)):
            found_i = [*contract[i], *visibility[i], *_event_problems(e)]
            if e.type == "impression" and e.impression_id is not None and e.impression_id not in owned_ids:
                found_i.append(("impression_id", "not an impression this feed served to this viewer"))
            if event_id in taken:
                found_i.append(("event_id", "the same id as an earlier event of this request"))
            taken.add(event_id)
            problems += [{"index": i, "field": field, "error": msg} for field, msg in dict.fromkeys(found_i)]
        return problems

    def _visibility(
        self, viewer: int, events: Sequence[ClientEvent], post: dict[str, np.ndarray], now: float
    ) -> list[list[tuple[str, str]]]:
        """Per event: whether its (known) post is visible to the viewer; unknown posts are the contract's."""
        friends, since = self.store.friends(viewer)
        friend_set = set(friends[since < now].tolist())
        blocked = set(self.store.blocked_with(viewer).tolist())
        out: list[list[tuple[str, str]]] = []
        for i, e in enumerate(events):
            if post["found"][i] and not visible(
                viewer,
                int(post["author_id"][i]),
                str(post["visibility"][i]),
                not np.isnan(post["deleted_s"][i]),
                friend_set,
                blocked,
            ):
                out.append([("post_id", f"post {e.post_id} is not visible to user {viewer}")])
            else:
                out.append([])
        return out

    def create_post(self, author: int, post: PostDraft, idempotency_key: str | None = None) -> PostCreated:
        """Check the post by the contract's rules, embed its text, store it. With an ``Idempotency-Key`` the
        post id is derived from it and the author, so a replayed request stores nothing new."""
        if not self.store.has_user(author):
            raise FeedError(404, f"unknown user {author}")
        if self._encode_text is None:
            raise FeedError(503, "this replica does not accept posts (no text encoder)")
        now = self.clock.now()
        if idempotency_key:
            digest = hmac.new(self._cursor_key, f"post:{author}:{idempotency_key}".encode(), hashlib.sha256)
            post_id = new_post_id(digest.digest())
            if self.store.applied([f"post:{post_id}"])[0]:
                return PostCreated(
                    post_id=post_id, created_at=dt.datetime.fromtimestamp(now, dt.UTC).isoformat()
                )
        else:
            post_id = new_post_id(os.urandom(8))
            while self.store.applied([f"post:{post_id}"])[0]:  # taken (about 1 in 10^10 at a million posts)
                post_id = new_post_id(os.urandom(8))
        draft = NewPost(  # checked by the contract before the text is embedded
            post_id=post_id,
            author_id=author,
            created_at_ms=int(now * 1000),
            modality=post.modality,
            text=post.text,
            topics=post.topics or [],
            visibility=post.visibility,
            media_duration_s=post.media_duration_s,
            media_vector=post.media_vector,
            text_emb=[],
        )
        rules = Rules(int((now - 60) * 1000), int((now + 60) * 1000))
        (problems,) = contract_problems(
            [draft.log_record()], references([author], np.zeros(0), np.zeros(0)), rules
        )
        if problems:
            raise FeedError(
                422,
                {
                    "message": f"{len(problems)} problem(s); nothing was stored",
                    "errors": [{"field": f, "error": m} for f, m in dict.fromkeys(problems)],
                },
            )
        emb = self._encode_text([post.text or ""])[0]
        record = dataclasses.replace(draft, text_emb=[float(x) for x in emb])
        self.publish([record])
        if self.retriever is not None:  # retrievable by strangers at once (other replicas: next poll)
            try:
                self.retriever.catch_up(self.store, now)
            except Exception as e:  # the post is stored; the index catches up at its next poll
                log.warning("indexing post %d failed (%s: %s)", post_id, type(e).__name__, e)
        return PostCreated(post_id=post_id, created_at=dt.datetime.fromtimestamp(now, dt.UTC).isoformat())


def new_post_id(entropy: bytes) -> int:
    """A new post's id from 8 bytes of entropy: in [2^52, 2^53), above any small id a log already uses and
    exact as a JavaScript number (JSON clients in browsers read ids as doubles, exact only to 2^53).

    >>> 2**52 <= new_post_id(bytes(8)) < new_post_id(bytes([255] * 8)) < 2**53
    True
    """
    return (1 << 52) | (int.from_bytes(entropy[:8], "little") & ((1 << 52) - 1))


def _served(ranked: Ranked, item: FeedItem, served_at_ms: int) -> ServedImpression:
    return ServedImpression(
        impression_id=item.impression_id,
        request_id=ranked.request_id,
        viewer_id=ranked.viewer,
        post_id=item.post_id,
        served_at_ms=served_at_ms,
        position=item.position,
        arm=ranked.model.arm,
        model_version=ranked.model.version,
        fallback=ranked.fallback is not None,
        retrieval_arm=ranked.model.retrieval_arm,
        suggested=item.source == "suggested",
    )
