"""Prometheus metrics of the feed, per stage, through ``ray.serve.metrics`` (exported by every Ray node).

Outside a Ray worker (the single-process benchmark) :class:`FeedMetrics` records nothing.
"""

from __future__ import annotations

import contextlib
from typing import Any

LATENCY_BOUNDARIES_MS = [1.0, 2.0, 5.0, 10.0, 20.0, 35.0, 50.0, 75.0, 100.0, 200.0, 500.0, 1000.0, 2500.0]
CANDIDATE_BOUNDARIES = [1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0]


class FeedMetrics:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from ray.serve import metrics

        self.latency = metrics.Histogram(
            "feed_stage_latency_ms",
            description="Latency of each feed stage (retrieval, ranking, rerank, total).",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("stage",),
        )
        self.candidates = metrics.Histogram(
            "feed_candidates",
            description="Candidates retrieved per feed request.",
            boundaries=CANDIDATE_BOUNDARIES,
        )
        self.requests = metrics.Counter(
            "feed_requests",
            description="Feed requests by arm and outcome.",
            tag_keys=("arm", "outcome"),  # type: ignore[arg-type]  # Ray annotates tuple[str] for any length
        )
        self.fallbacks = metrics.Counter(
            "feed_fallbacks", description="Feeds served reverse-chronologically.", tag_keys=("reason",)
        )
        self.model_version = metrics.Gauge(
            "feed_model_version", description="Registered model version served, by arm.", tag_keys=("arm",)
        )
        self.events = metrics.Counter(
            "feed_events", description="Client events by outcome.", tag_keys=("outcome",)
        )

    def stage(self, stage: str, ms: float) -> None:
        if self.enabled:
            self.latency.observe(ms, tags={"stage": stage})

    def request(self, arm: str, outcome: str, n_candidates: int) -> None:
        if self.enabled:
            self.requests.inc(tags={"arm": arm, "outcome": outcome})
            self.candidates.observe(n_candidates)

    def fallback(self, reason: str) -> None:
        if self.enabled:
            self.fallbacks.inc(tags={"reason": reason})

    def served_version(self, arm: str, version: Any) -> None:
        if self.enabled:
            with contextlib.suppress(TypeError, ValueError):
                self.model_version.set(float(version), tags={"arm": arm})

    def event(self, outcome: str, n: int = 1) -> None:
        if self.enabled and n:
            self.events.inc(n, tags={"outcome": outcome})
