"""The single-process feed server of ``bench.serve_latency``: the same pipeline
(:class:`serve.feed.FeedService`) and routes (:func:`serve.api.create_api`) behind plain uvicorn, the
ranker called in-process, no Ray.

``python -m bench.plain_feed_server DATA_DIR SECRET PORT``
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from bench.serve_latency import serve_args


def plain_server(data_dir: Path, secret: str, port: int) -> None:
    """The same pipeline and routes in this one process, behind uvicorn (no Ray)."""
    import torch
    import uvicorn

    from serve.api import create_api
    from serve.app import RetrievalHost
    from serve.auth import TokenAuth
    from serve.config import parse
    from serve.feed import Clock, FeedService
    from serve.log import ServingLog
    from serve.metrics import FeedMetrics
    from serve.ranking import ModelSlots, Scorer
    from serve.records import ScoreRequest, Scores
    from serve.runtime import settle_heap
    from serve.store import EmbeddedStore

    torch.set_num_threads(1)
    cfg = parse(serve_args(data_dir, secret, "ingress"))
    store = EmbeddedStore.load(data_dir)
    slots = ModelSlots(cfg.model, data_dir)
    slots.refresh()
    scorer = Scorer(store, slots)

    async def score(request: ScoreRequest) -> Scores:
        return scorer.score([request])[0]

    async def health() -> dict[str, Any]:
        return {"models": slots.versions(), "retriever": retrieval.slot.info()}

    origin = (data_dir / "online" / "manifest.json").stat().st_mtime
    clock = Clock("snapshot", store.as_of_s, origin)
    retrieval = RetrievalHost(cfg, store, clock)  # the registered retriever's index, as in a replica
    service = FeedService(
        cfg,
        store,
        ServingLog(data_dir, f"plain-{os.getpid()}"),
        score,
        clock,
        FeedMetrics(enabled=False),
        retriever=retrieval.slot,
    )
    settle_heap()  # as a replica does at the end of its start-up
    uvicorn.run(
        create_api(service, TokenAuth(secret), health), host="127.0.0.1", port=port, log_level="warning"
    )


if __name__ == "__main__":
    plain_server(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
