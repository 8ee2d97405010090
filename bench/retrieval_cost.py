"""What suggestions cost a feed: ``python -m bench.retrieval_cost --data-dir D`` (after ``make demo``).

One process, one request at a time (the cost of a feed, not a queue), the feed pipeline as a replica runs
it (:class:`serve.feed.FeedService` with the registered ranker through :class:`serve.ranking.Scorer` and
the registered retriever's index, :class:`serve.index.RetrieverSlot`, ``configs/serve.yaml``'s settings)
over ``D``'s online snapshot. Viewers are bucketed by how many friends' posts they have; each viewer's
first page is asked alternately of the mixed feed (friends' posts and ``retrieval.out_of_network``
suggestions from the index) and of friends' posts only (``out_of_network: 0``), so both are measured side
by side under the same conditions. Reports candidates per request, p50/p99 of the whole feed and the
median per stage (``FeedResult.timings_ms``).

Then the placements, over HTTP on Ray Serve (started as for serving, :func:`serve.runtime.ray_serve_env`;
``configs/serve.yaml``'s deployments): ``retrieval.placement: ingress`` (the index in the FeedIngress
replica) and ``deployment`` (a Retriever deployment behind a handle), one request at a time for the same
viewers, alternating per round. Writes the "Retrieval cost (issue 17)" section of ``--out``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from bench.report import machine, publish
from pipelines.common.runtime import REPO

#: Friends' posts per viewer: the buckets' bounds.
BUCKETS = ((50, 150), (250, 400), (600, 2000))
STAGES = ("retrieval", "ranking", "rerank", "total")


def services(data_dir: Path) -> tuple[Any, Any]:
    """The mixed and the friends-only feed over one store, ranker and index."""
    import torch

    from serve.app import RetrievalHost
    from serve.config import load_serve_yaml
    from serve.feed import Clock, FeedService
    from serve.log import ServingLog
    from serve.metrics import FeedMetrics
    from serve.ranking import ModelSlots, Scorer
    from serve.records import ScoreRequest, Scores
    from serve.store import EmbeddedStore

    torch.set_num_threads(1)
    _, cfg = load_serve_yaml(REPO / "configs" / "serve.yaml")
    cfg = cfg.model_copy(update={"data_dir": data_dir})
    store = EmbeddedStore.load(data_dir)
    slots = ModelSlots(cfg.model, data_dir)
    slots.refresh()
    scorer = Scorer(store, slots)
    r = cfg.retrieval
    clock = Clock("snapshot", store.as_of_s, time.time())
    slot = RetrievalHost(cfg, store, clock).slot  # as a replica: the index, kept up by a watcher thread
    if slot.current is None:
        raise SystemExit(f"{data_dir}: no {r.retriever}@{r.retriever_alias} is registered (make demo)")

    async def score(request: ScoreRequest) -> Scores:
        return scorer.score([request])[0]

    def feed(out_of_network: int) -> Any:
        c = cfg.model_copy(update={"retrieval": r.model_copy(update={"out_of_network": out_of_network})})
        log = ServingLog(data_dir, f"bench-{os.getpid()}")
        return FeedService(c, store, log, score, clock, FeedMetrics(enabled=False), retriever=slot)

    return feed(r.out_of_network), feed(0)


def index_build(data_dir: Path, alias: str, repeats: int = 3) -> dict[str, Any]:
    """Seconds for a replica to build its index (:meth:`serve.index.RetrieverSlot.refresh`) for the version
    behind ``alias``: from the post vectors logged with it, and running the post tower itself."""
    import statistics

    from serve.index import RetrieverSlot
    from serve.store import EmbeddedStore

    store = EmbeddedStore.load(data_dir)
    now = store.as_of_s + 60
    times: dict[str, list[float]] = {"logged vectors": [], "post tower here": []}
    info: dict[str, Any] = {}
    for _ in range(repeats):
        for name, load in (("logged vectors", None), ("post tower here", lambda n, v: None)):
            slot = RetrieverSlot("feed-retriever", alias, 7 * 86400, "flat", data_dir, load_vectors=load)
            t = time.perf_counter()
            built = slot.refresh(store, now)
            times[name].append(time.perf_counter() - t)
            if built is None:
                raise SystemExit(f"feed-retriever@{alias}: the index was not built (see the log)")
            info[name] = slot.info()
    return {k: {"s": statistics.median(v), **(info[k] or {})} for k, v in times.items()}


def placements(data_dir: Path, users: list[int], rounds: int) -> dict[str, list[float]]:
    """Feed latency (ms) over HTTP for ``users``, per ``retrieval.placement``, one request at a time."""
    import secrets

    import requests
    from ray import serve

    from bench.serve_latency import free_port
    from pipelines.common.runtime import ray_session
    from pipelines.common.tracking import tracking_uri
    from serve.app import compose
    from serve.auth import TokenAuth
    from serve.config import load_serve_yaml
    from serve.runtime import ray_serve_env

    doc, cfg = load_serve_yaml(REPO / "configs" / "serve.yaml")
    deployments = [
        *doc["applications"][0].get("deployments", []),
        {"name": "Retriever", "ray_actor_options": {"num_cpus": 0.25}},
    ]
    secret = secrets.token_urlsafe(32)
    auth = TokenAuth(secret)
    tokens = {u: auth.mint(u, ttl_s=7200) for u in users}
    out: dict[str, list[float]] = {}
    with ray_session(env=ray_serve_env(drain_s=1.0)):
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        base = f"http://127.0.0.1:{port}"
        for placement in ("ingress", "deployment"):
            args = cfg.model_dump(mode="json")
            args["data_dir"], args["auth"]["secret"] = str(data_dir), secret
            args["model"]["tracking_uri"] = tracking_uri(data_dir)
            args["retrieval"]["placement"] = placement
            serve.run(compose(args, deployments), name=f"feed-{placement}", route_prefix=f"/{placement}")
        lat: dict[str, list[float]] = {"ingress": [], "deployment": []}
        with requests.Session() as http:
            for r in range(rounds + 1):  # round 0 warms up
                for u in users:
                    for placement in lat:
                        t = time.perf_counter()
                        resp = http.get(
                            f"{base}/{placement}/feed/{u}",
                            params={"limit": 20},
                            headers={"Authorization": f"Bearer {tokens[u]}"},
                            timeout=30,
                        )
                        ms = (time.perf_counter() - t) * 1000
                        resp.raise_for_status()
                        if r:
                            lat[placement].append(ms)
                        assert not resp.json()["fallback"], f"{placement}: a fallback feed"
        out = lat
        serve.shutdown()
    return out


def main(
    data_dir: Annotated[Path, typer.Option(help="A data directory after make demo.")] = Path("data/demo"),
    per_bucket: Annotated[int, typer.Option(help="Viewers per bucket.")] = 20,
    repeats: Annotated[int, typer.Option(help="First pages per viewer and feed.")] = 5,
    rounds: Annotated[int, typer.Option(help="Over HTTP: feeds per viewer and placement.")] = 10,
    index_alias: Annotated[str, typer.Option(help="Index build: the retriever version's alias.")] = (
        "champion"
    ),
    out: Annotated[Path | None, typer.Option(help="Markdown file to write the section into.")] = None,
) -> None:
    from pipelines.common import tracking
    from serve.retrieval import RetrievalConfig, retrieve

    t0 = time.time()
    with tracking.pointed_at(tracking.tracking_uri(data_dir)):
        mixed, friends_only = services(data_dir)
        build = index_build(data_dir, index_alias)
    store = mixed.store
    now = store.as_of_s + 60
    sizes = {int(u): len(retrieve(store, int(u), now, RetrievalConfig()).post_ids) for u in store.user_ids()}
    lines = [
        "| friends' posts | viewers | feed | candidates | p50 ms | p99 ms | "
        + " | ".join(f"{s} p50" for s in STAGES[:-1])
        + " |",
        "|---|---:|---|---:|---:|---:|" + "---:|" * (len(STAGES) - 1),
    ]
    for lo, hi in BUCKETS:
        users = [u for u, n in sizes.items() if lo <= n < hi][:per_bucket]
        if not users:
            continue
        got: dict[str, dict[str, list[float]]] = {"mixed": {}, "friends only": {}}
        for u in users:  # warm both
            asyncio.run(mixed.feed(u, 20, None))
            asyncio.run(friends_only.feed(u, 20, None))
        for _ in range(repeats):
            for u in users:
                for name, svc in (("mixed", mixed), ("friends only", friends_only)):
                    res = asyncio.run(svc.feed(u, 20, None))
                    for s in STAGES:
                        got[name].setdefault(s, []).append(res.timings_ms[s])
                    got[name].setdefault("candidates", []).append(
                        len(svc._pages[res.request_id].post_ids)  # the ranked list's length
                    )
        for name, g in got.items():
            total = np.array(g["total"])
            stages = " | ".join(f"{np.median(g[s]):.1f}" for s in STAGES[:-1])
            lines.append(
                f"| {lo}–{hi} | {len(users)} | {name} | {np.mean(g['candidates']):.0f} | "
                f"{np.percentile(total, 50):.1f} | {np.percentile(total, 99):.1f} | {stages} |"
            )
    lines += [
        "",
        f"A replica building its index for `feed-retriever@{index_alias}` (`RetrieverSlot.refresh`, median "
        "of 3): from the post vectors logged with the version (`pipelines/retrieval/post_index.py`), and "
        "running the post tower itself:",
        "",
        "| index from | seconds | posts | embedded by the replica |",
        "|---|---:|---:|---:|",
        *(
            f"| {k} | {v['s']:.3f} | {v.get('posts', '–')} | {v.get('embedded_here', '–')} |"
            for k, v in build.items()
        ),
    ]
    heavy = [u for u, n in sizes.items() if BUCKETS[-1][0] <= n < BUCKETS[-1][1]][:per_bucket]
    lat = placements(data_dir, heavy, rounds)
    lines += [
        "",
        f"Over HTTP on Ray Serve (direct ingress), the {len(heavy)} viewers of the last bucket, one request "
        f"at a time, {rounds} rounds alternating the placements (two apps on one Serve instance):",
        "",
        "| retrieval.placement | requests | p50 ms | p90 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {p} | {len(v)} | {np.percentile(v, 50):.1f} | {np.percentile(v, 90):.1f} | "
            f"{np.percentile(v, 99):.1f} |"
            for p, v in lat.items()
        ),
    ]
    section = "\n".join(
        [
            "## Retrieval cost (issue 17)",
            "",
            f"`python -m bench.retrieval_cost --data-dir {data_dir} --index-alias {index_alias}`, "
            f"{dt.date.today()}, {machine()}; "
            f"{time.time() - t0:.0f} s. One process, one request at a time, torch on 1 thread: the feed "
            "pipeline (`FeedService`, the registered ranker and retriever, configs/serve.yaml) on the demo "
            f"world; each viewer's first page {repeats} times from each feed, alternating. 'mixed' adds "
            "the index's suggestions (`retrieval.out_of_network`, pre-ranked over "
            "`ranking.max_candidates`); 'friends only' is `out_of_network: 0`. Candidates = posts ranked.",
            "",
            *lines,
            "",
        ]
    )
    publish(section, out)


if __name__ == "__main__":
    typer.run(main)
