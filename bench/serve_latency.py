"""Serving under load: ``python -m bench.serve_latency`` (part of ``make bench``).

Over real HTTP with the real trained models, on a denser synthetic world than the demo's (viewers with
~500, ~1,000 and ~2,000 candidates: friends' posts plus the retriever's 200 suggestions), in one run and on
one machine, side by side:

1. the Ray Serve app as ``configs/serve.yaml`` deploys it (its deployments, replicas and autoscaling), on
   a Ray started for serving (:func:`serve.runtime.ray_serve_env`: direct ingress, behind HAProxy when
   installed);
2. the same pipeline (``serve.feed.FeedService``, the same routes, the retriever's index) in one process
   behind plain uvicorn (:mod:`bench.plain_feed_server`);
3. the bare ranker on the same candidates: ``ServableRanker.predict`` (collate + forward) on columns
   assembled beforehand, and feature assembly + predict (what the ranking stage does).

Load is **open-loop** (:mod:`bench.loadgen`): Poisson arrivals at a fixed offered rate from a process of
its own, stepped up until p99 passes a second or 5% fail. Per step: answered QPS, p50/p90/p99 from each
request's scheduled arrival, errors, fallbacks, the load generator's CPU, and the medians of the feed's
own stage timings (``Server-Timing``). The capacity of a system is the highest offered rate (of an unbroken
run from the lowest) whose answered requests' p99 is within 50 ms (and within 100 ms), with every request
answered in full (no error, shed request or fallback) and, MLPerf-like, with at most 1% failed so. Per
step also the CPU the whole machine spent per answered feed (the generator's own left out): the input of the
scale model.

Then, past capacity (``--overload``: every step run, on the ~1,000-candidate viewers): what each system
answers, how fast, and what it sheds (Ray Serve: 503 + ``Retry-After`` past FeedIngress's
``max_ongoing_requests`` + ``max_queued_requests``; uvicorn queues). Last, Ray Serve under a load step
(:data:`LOAD_STEP`) with FeedIngress's ``autoscaling_config`` (replicas bounded to the 2 cores): when the
autoscaler asked for a replica, when it answered, p99 and sheds before, during and after. Writes the
"Serving under load (issue 18)" section of ``--out``, and every step's numbers and the autoscaling run's
requests to ``<data dir>/serve_latency.json``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from bench.report import machine, write_section

REPO = Path(__file__).resolve().parent.parent
BUCKETS = (500, 1000, 2000)
WORLD = {
    "synth.users": 3000,
    "synth.mean_degree": 110.0,
    "synth.posts_per_user_day": 2.5,
    "synth.sessions_per_user_day": 1.0,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_world(data_dir: Path) -> None:
    """Synth → ingest → features → train (1 epoch) → champion, unless ``data_dir`` already has one."""
    from mlflow import MlflowClient

    from pipelines.common import tracking
    from pipelines.common.config import DataConfig, RetrieverConfig, TrainConfig, load_config
    from pipelines.common.runtime import ray_session
    from pipelines.features.stage import run as features
    from pipelines.ingest.stage import run as ingest
    from pipelines.retrieval.stage import run as train_retriever
    from pipelines.synth.stage import run as synth
    from pipelines.train.stage import run as train_and_publish

    tracking.configure(data_dir)
    ready = (data_dir / "online" / "manifest.json").exists()
    if not (ready and tracking.version_of("feed-ranker", "champion")):
        cfg = load_config(REPO / "configs" / "data.yaml", DataConfig, WORLD)
        train_cfg = load_config(
            REPO / "configs" / "train.yaml", TrainConfig, {"optim.epochs": 1, "experiment": "bench-serve"}
        )
        with ray_session():
            synth(cfg.synth, data_dir)
            ingest(cfg.ingest, data_dir)
            features(cfg.features, data_dir)
            published = train_and_publish(train_cfg, data_dir)
        MlflowClient().set_registered_model_alias("feed-ranker", "champion", str(published.version))
    if not tracking.version_of("feed-retriever", "champion"):  # the feed as served: with suggestions
        r_cfg = load_config(
            REPO / "configs" / "retriever.yaml",
            RetrieverConfig,
            {"optim.epochs": 2, "experiment": "bench-serve-retriever"},
        )
        with ray_session():
            retriever = train_retriever(r_cfg, data_dir)
        MlflowClient().set_registered_model_alias("feed-retriever", "champion", retriever.version)


def fresh_log(data_dir: Path) -> None:
    """Forget what earlier runs served and received (``D/raw/*/serving/``): a replica replays the serving
    log since the snapshot when it starts, so every system and every run starts from the same state.
    (Left in place, 580 MB of earlier runs' impressions had made replicas start in ~30 s, every bench
    viewer having "seen" most of their posts.)"""
    for table in ("impressions", "engagements", "posts"):
        shutil.rmtree(data_dir / "raw" / table / "serving", ignore_errors=True)


def pick_viewers(data_dir: Path, per_bucket: int = 32) -> dict[int, list[int]]:
    """Viewers whose candidate count (friends' posts + ``retrieval.out_of_network`` suggestions, at most
    ``ranking.max_candidates``) is within ±15% of each bucket."""
    from serve.config import load_serve_yaml
    from serve.retrieval import retrieve
    from serve.store import EmbeddedStore

    _, cfg = load_serve_yaml(REPO / "configs" / "serve.yaml")
    extra, cap = cfg.retrieval.out_of_network, cfg.ranking.max_candidates
    store = EmbeddedStore.load(data_dir)
    now = store.as_of_s + 60
    sizes = {
        int(u): min(cap, len(retrieve(store, int(u), now, cfg.retrieval).post_ids) + extra)
        for u in store.user_ids()
    }
    out = {}
    for b in BUCKETS:
        lo, hi = (0.85 * b, 1.15 * b) if b < 2000 else (1900, 2000)
        near = sorted((u for u, n in sizes.items() if lo <= n <= hi), key=lambda u: abs(sizes[u] - b))
        out[b] = near[:per_bucket]
    return out


def bare_forward(data_dir: Path, viewers: dict[int, list[int]]) -> dict[int, dict[str, float]]:
    """Median ms of predict() on pre-assembled columns, and of assembly + predict, per bucket."""
    import torch

    from pipelines.common.tracking import configure
    from serve.config import ModelSlotConfig, load_serve_yaml
    from serve.features import assemble
    from serve.index import RetrieverSlot
    from serve.ranking import ModelSlots, Scorer
    from serve.records import ScoreRequest
    from serve.retrieval import retrieve, with_suggestions
    from serve.store import EmbeddedStore

    torch.set_num_threads(1)
    configure(data_dir)
    _, cfg = load_serve_yaml(REPO / "configs" / "serve.yaml")
    store = EmbeddedStore.load(data_dir)
    index = RetrieverSlot("feed-retriever", "champion", 7 * 86400, "flat", data_dir)
    index.refresh(store, store.as_of_s + 60)
    slots = ModelSlots(ModelSlotConfig(), data_dir)
    slots.refresh()
    model = slots.get("champion")
    assert model is not None
    scorer = Scorer(store, slots)
    now = store.as_of_s + 60
    out = {}
    for b, users in viewers.items():
        fwd, full, n = [], [], []
        for u in users[:8]:
            r, budget = cfg.retrieval, cfg.ranking.max_candidates
            friends = retrieve(store, u, now, r)
            ids = with_suggestions(store, u, now, r, budget, index.current, friends).post_ids  # as served
            cols = assemble(store, u, ids, now)
            model.ranker.predict(cols)  # warm
            for _ in range(5):
                t = time.perf_counter()
                model.ranker.predict(cols)
                fwd.append(time.perf_counter() - t)
                t = time.perf_counter()
                scorer.score([ScoreRequest(u, ids, now, "champion")])
                full.append(time.perf_counter() - t)
            n.append(len(ids))
        out[b] = {
            "candidates": float(np.mean(n)),
            "forward_ms": statistics.median(fwd) * 1000,
            "features_forward_ms": statistics.median(full) * 1000,
        }
    return out


def serve_args(data_dir: Path, secret: str, placement: str) -> dict[str, Any]:
    from pipelines.common.tracking import tracking_uri
    from serve.config import load_serve_yaml

    _, cfg = load_serve_yaml(REPO / "configs" / "serve.yaml")
    args = cfg.model_dump(mode="json")
    args["data_dir"] = str(data_dir)
    args["auth"]["secret"] = secret
    args["ranking"]["placement"] = placement
    args["model"]["tracking_uri"] = tracking_uri(data_dir)
    return args


DEFAULT_RATES = "10,20,30,40,50,60,80,100,120,150,200"


def _users(viewers: list[int], tokens: dict[int, str]) -> list[tuple[int, str]]:
    return [(u, tokens[u]) for u in viewers]


def sweeps(base: str, tokens: dict, viewers: dict, seconds: float, rates: list[float]) -> dict[int, list]:
    """Per candidate bucket, the open-loop sweep (after a short warm-up at a low rate)."""
    from bench.loadgen import step, sweep

    out = {}
    for b in viewers:
        if not viewers[b]:
            continue
        users = _users(viewers[b], tokens)
        step(base, users, 5.0, 3.0)  # warm: models, caches, HAProxy's view of the replicas
        print(f" ~{b} candidates", flush=True)
        out[b] = sweep(base, users, rates, seconds)
    return out


def _main_bucket(viewers: dict[int, list[int]]) -> int:
    """The bucket the overload and autoscaling runs load: ~1,000 candidates, else the first with viewers."""
    return 1000 if viewers.get(1000) else next(b for b, v in viewers.items() if v)


def overload(base: str, tokens: dict, viewers: dict, seconds: float, rates: list[float]) -> list:
    """Steps past capacity (every one, whatever the last did) on the ~1,000-candidate viewers: what is
    answered, how fast, and what is shed."""
    from bench.loadgen import step

    bucket = _main_bucket(viewers)
    users = _users(viewers[bucket], tokens)
    out = []
    print(f" overload, ~{bucket} candidates", flush=True)
    for i, qps in enumerate(rates):
        r = step(base, users, qps, seconds, seed=100 + i)
        print(
            f"  offered {r['offered_qps']:.1f}: answered {r['answered_qps']:.1f}, p99 {r['p99']:.1f} ms, "
            f"status {r['status']}",
            flush=True,
        )
        out.append({**r, "bucket": bucket})
    return out


#: The autoscaling run: this rate, then that one, on the ~1,000-candidate viewers.
LOAD_STEP = ((10.0, 30.0), (50.0, 90.0))


def autoscale(data_dir: Path, secret: str, base: str, tokens: dict, viewers: dict, deployments: list) -> dict:
    """A load step against FeedIngress's ``autoscaling_config`` from configs/serve.yaml, its replicas
    bounded to 1..2 (the 2 cores here; the file's floor of 2 is for availability): the replica count
    over time (``serve.status()`` every 0.5 s) and every request of the step."""
    import threading

    from ray import serve

    from bench.loadgen import step
    from serve.app import compose

    ingress = next(d for d in deployments if d["name"] == "FeedIngress")
    bounded = {**ingress["autoscaling_config"], "min_replicas": 1, "max_replicas": 2}
    others = [d for d in deployments if d["name"] != "FeedIngress"]
    app = compose(
        serve_args(data_dir, secret, "ingress"), [{**ingress, "autoscaling_config": bounded}, *others]
    )
    serve.run(app, name="feed", route_prefix="/")
    users = _users(viewers[_main_bucket(viewers)], tokens)
    deadline = time.time() + 60
    while time.time() < deadline and step(base, users, 5.0, 2.0)["ok"] == 0:  # HAProxy's reload
        time.sleep(1)
    replicas: list[tuple[float, int, int]] = []  # (wall time, running, wanted: running + starting)
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            states = serve.status().applications["feed"].deployments["FeedIngress"].replica_states
            running = sum(n for state, n in states.items() if state == "RUNNING")  # a str enum
            wanted = running + sum(n for state, n in states.items() if state == "STARTING")
            replicas.append((time.time(), int(running), int(wanted)))
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    print(f" autoscaling: {LOAD_STEP}", flush=True)
    r = step(base, users, 0.0, 0.0, seed=7, schedule=list(LOAD_STEP), trace=True)
    stop.set()
    watcher.join()
    serve.delete("feed")
    return {
        "config": bounded,
        "step": list(LOAD_STEP),
        "replicas": [(t - r["started_at"], n, w) for t, n, w in replicas],
        "trace": r.pop("trace"),
        "summary": r,
    }


def serve_rows(
    data_dir: Path, secret: str, tokens: dict, viewers: dict, seconds: float, rates: list, over: list
) -> dict:
    """The app as configs/serve.yaml deploys it, on a Ray started for serving: the sweeps, the overload
    steps, then the autoscaling run."""
    from ray import serve

    from pipelines.common.runtime import ray_session
    from serve.app import compose
    from serve.config import load_serve_yaml
    from serve.runtime import ray_serve_env

    doc, _ = load_serve_yaml(REPO / "configs" / "serve.yaml")
    deployments = doc["applications"][0].get("deployments")
    fresh_log(data_dir)
    with ray_session(env=ray_serve_env(drain_s=1.0)):
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        print("Ray Serve (configs/serve.yaml)", flush=True)
        app = compose(serve_args(data_dir, secret, "ingress"), deployments)
        serve.run(app, name="feed", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        out: dict[str, Any] = {"sweeps": sweeps(base, tokens, viewers, seconds, rates)}
        out["overload"] = overload(base, tokens, viewers, seconds, over)
        serve.delete("feed")
        fresh_log(data_dir)
        out["autoscale"] = autoscale(data_dir, secret, base, tokens, viewers, deployments)
        serve.shutdown()
    return out


def plain_rows(
    data_dir: Path, secret: str, tokens: dict, viewers: dict, seconds: float, rates: list, over: list
) -> dict:
    import requests

    fresh_log(data_dir)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.plain_feed_server", str(data_dir), secret, str(port)], env=env
    )
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(1)
        print("plain uvicorn, one process", flush=True)
        base = f"http://127.0.0.1:{port}"
        return {
            "sweeps": sweeps(base, tokens, viewers, seconds, rates),
            "overload": overload(base, tokens, viewers, seconds, over),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)


NAMES = {"serve": "Ray Serve (configs/serve.yaml)", "plain": "plain uvicorn, 1 process"}


def _decided(auto: dict[str, Any]) -> float | None:
    """Seconds from the load step to the autoscaler asking for a second replica."""
    t_step = auto["step"][0][1]
    at = next((t for t, _, w in auto["replicas"] if t >= t_step and w >= 2), None)
    return None if at is None else at - t_step


def _windows(auto: dict[str, Any]) -> tuple[float | None, list[tuple[str, dict[str, float]]]]:
    """Seconds from the load step to the second running replica, and per window of the run (before the
    step, until the scale-up, after it) the requests, p50/p99 of the answered and the shed."""
    t_step = auto["step"][0][1]
    end = sum(t for _, t in auto["step"])
    up = next((t for t, n, _ in auto["replicas"] if t >= t_step and n >= 2), None)
    bounds = [("before the step", 0.0, t_step)]
    if up is not None:
        bounds += [("step → 2 replicas", t_step, up), ("2 replicas", up, end)]
    else:
        bounds += [("after the step (no scale-up)", t_step, end)]
    out = []
    for name, lo, hi in bounds:
        rows = [r for r in auto["trace"] if lo <= r[0] < hi]
        ok = np.array([ms for _, ms, k in rows if k == "200"])
        out.append(
            (
                f"{name} ({lo:.0f}–{hi:.0f} s)",
                {
                    "requests": len(rows),
                    "p50": float(np.percentile(ok, 50)) if len(ok) else float("nan"),
                    "p99": float(np.percentile(ok, 99)) if len(ok) else float("nan"),
                    "shed": sum(k == "503" for _, _, k in rows),
                    "other": sum(k not in ("200", "503") for _, _, k in rows),
                },
            )
        )
    return (None if up is None else up - t_step), out


def section(
    rows: dict[str, dict],
    bare: dict[int, dict[str, float]],
    seconds: float,
    cmd: str,
    serve_yaml: Path = REPO / "configs" / "serve.yaml",
) -> str:
    """The RESULTS section of a run (``serve_yaml``: the Serve config it ran with)."""
    from bench.loadgen import BOUNDS_MS, capacity

    ingress = next(
        d
        for d in load_serve_yaml_doc(serve_yaml)["applications"][0]["deployments"]
        if d["name"] == "FeedIngress"
    )
    lines = [
        "## Serving under load (issue 18)",
        "",
        f"Measured {dt.date.today().isoformat()} on {machine()}, with `{cmd}`: one run, both systems on "
        f"the same viewers; open-loop load (`bench.loadgen`: Poisson arrivals at the offered rate from a "
        f"process of its own, on the same cores as the servers), {seconds:.0f} s per step, stepped up until "
        "p99 passed 1 s or 5% failed. `GET /feed/{id}?limit=20` with a bearer token: the full pipeline "
        "(retrieval with the retriever's suggestions, features, ranking, re-ranking, page, impression log). "
        "World: the demo generator with "
        + ", ".join(f"{k.split('.')[1]}={v}" for k, v in WORLD.items())
        + "; a ranker (1 epoch) and a retriever trained on it as champions. Ray Serve: "
        + (
            f"direct ingress behind HAProxy (`{shutil.which('haproxy')}`)"
            if shutil.which("haproxy")
            else "direct ingress, Serve's Python proxy in front (no haproxy installed)"
        )
        + f"; FeedIngress `max_ongoing_requests: {ingress.get('max_ongoing_requests')}`, "
        + (
            f"`max_queued_requests: {ingress['max_queued_requests']}` (past them: 503 with Retry-After), "
            if ingress.get("max_queued_requests") is not None
            else "no `max_queued_requests` (no shedding: every request waits its turn), "
        )
        + f"autoscaling {ingress.get('autoscaling_config')}.",
        "",
        "Capacity: the offered QPS (arrivals drawn, per second) of the last step of the unbroken run from "
        "the lowest rate up whose answered requests' p99 was within the bound, and that answered every "
        "request in full (no error, no shed request, no fallback); and, closer to MLPerf's server "
        "scenario (99% of queries within the bound), that failed at most 1% of its requests that way.",
        "",
        "| system | candidates | "
        + " | ".join(f"QPS at p99 ≤ {b:.0f} ms | ≤ {b:.0f} ms, ≤ 1% failed" for b in BOUNDS_MS)
        + " |",
        "|---|---|" + "---:|" * (2 * len(BOUNDS_MS)),
    ]
    sweeps = {key: {int(b): st for b, st in r["sweeps"].items()} for key, r in rows.items()}
    for key, by_bucket in sweeps.items():
        for b, steps in by_bucket.items():
            caps = [capacity(steps, bound, tol) for bound in BOUNDS_MS for tol in (0.0, 0.01)]
            cells = " | ".join("–" if c is None else f"{c:.1f}" for c in caps)
            lines.append(f"| {NAMES[key]} | ~{b} | {cells} |")
    all_steps = [s for by in sweeps.values() for st in by.values() for s in st]
    stage_names = sorted({k for s in all_steps for k in s["stages_p50_ms"]})
    lines += [
        "",
        "Every step (latency from the scheduled arrival; stages: the medians of the feed's `Server-Timing`, "
        "answered requests only; box CPU: cores the whole machine was busy, servers, Ray, HAProxy and the "
        "load generator; CPU ms/feed: the machine's busy time less the generator's, per answered feed; "
        "`ranking` is `features` (assembly) + `forward` (the batched forward, "
        "shared by the requests batched together) + the wait for a batch; `outside` is p50 − the median "
        "`total`: HTTP, authentication, the page and its JSON, and the queue before the handler; the "
        "impression log is written after the response; client CPU: cores the load generator used):",
        "",
        "| system | candidates | offered QPS | answered QPS | p50 ms | p90 ms | p99 ms | errors | "
        "fallbacks | client CPU | box CPU | CPU ms/feed | "
        + " | ".join(f"{k} ms" for k in stage_names)
        + " | outside ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * (len(stage_names) + 1),
    ]
    for key, by_bucket in sweeps.items():
        for b, steps in by_bucket.items():
            for s in steps:
                errors = s["sent"] - s["ok"]
                st = s["stages_p50_ms"]
                stages = " | ".join(f"{st.get(k, float('nan')):.1f}" for k in stage_names)
                outside = s["p50"] - st.get("total", float("nan"))
                lines.append(
                    f"| {NAMES[key]} | ~{b} | {s['offered_qps']:.1f} | {s['answered_qps']:.1f} | "
                    f"{s['p50']:.1f} | {s['p90']:.1f} | {s['p99']:.1f} | {errors} | {s['fallbacks']} | "
                    f"{s['client_cpu']:.2f} | {s['box_cpu']:.2f} | {s['server_cpu_ms_per_feed']:.1f} | "
                    f"{stages} | {outside:.1f} |"
                )
    lines += [
        "",
        "Past capacity (every step run whatever the one before did; p50/p99 of the answered requests, "
        "p99 all: every request, a timeout counted at 10 s):",
        "",
        "| system | candidates | offered QPS | answered QPS | p50 ms | p99 ms | p99 all ms | shed (503) | "
        "other failures | fallbacks | Retry-After s | box CPU | CPU ms/feed |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, r in rows.items():
        for s in r.get("overload", []):
            shed = s["status"].get("503", 0)
            other = s["sent"] - s["ok"] - shed
            ra = "–" if s.get("retry_after_s") is None else f"{s['retry_after_s']:.0f}"
            lines.append(
                f"| {NAMES[key]} | ~{s['bucket']} | {s['offered_qps']:.1f} | {s['answered_qps']:.1f} | "
                f"{s['p50']:.1f} | {s['p99']:.1f} | {s['p99_all']:.1f} | {shed} | {other} | {s['fallbacks']} "
                f"| {ra} | {s['box_cpu']:.2f} | {s['server_cpu_ms_per_feed']:.1f} |"
            )
    auto = rows["serve"].get("autoscale")
    if auto:
        took, windows = _windows(auto)
        decided = _decided(auto)
        counts = sorted({n for _, n, _ in auto["replicas"]})
        lines += [
            "",
            f"Autoscaling: a load step of {auto['step'][0][0]:.0f} QPS for {auto['step'][0][1]:.0f} s, then "
            f"{auto['step'][1][0]:.0f} QPS for {auto['step'][1][1]:.0f} s, on ~1,000-candidate viewers, "
            f"FeedIngress autoscaling {auto['config']} (configs/serve.yaml's, replicas bounded to the 2 "
            f"cores). Running replicas seen: {counts}; the autoscaler asked for a second replica "
            + ("never" if decided is None else f"{decided:.1f} s after the step")
            + ", which was running (answering) "
            + ("never" if took is None else f"{took:.1f} s after the step")
            + ".",
            "",
            "| window | requests | p50 ms | p99 ms | shed (503) | other failures |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, w in windows:
            lines.append(
                f"| {name} | {w['requests']} | {w['p50']:.1f} | {w['p99']:.1f} | {w['shed']} | {w['other']} |"
            )
    lines += [
        "",
        "Bare ranker on the same candidates (median of 5 calls × 8 viewers, 1 torch thread):",
        "",
        "| candidates | predict ms (collate + forward) | features + predict ms |",
        "|---|---|---|",
    ]
    for v in bare.values():
        lines.append(f"| {v['candidates']:.0f} | {v['forward_ms']:.1f} | {v['features_forward_ms']:.1f} |")
    return "\n".join(lines) + "\n"


def load_serve_yaml_doc(path: Path) -> dict[str, Any]:
    from serve.config import load_serve_yaml

    doc, _ = load_serve_yaml(path)
    return dict(doc)


def main(
    data_dir: Annotated[Path, typer.Option(help="Bench world (built on first use).")] = Path(
        "data/bench-serve"
    ),
    out: Annotated[Path, typer.Option(help="Markdown file to write the section into.")] = Path(
        "bench/RESULTS.md"
    ),
    seconds: Annotated[float, typer.Option(help="Seconds per load step.")] = 30.0,
    rates: Annotated[str, typer.Option(help="Offered QPS steps (comma-separated).")] = DEFAULT_RATES,
    buckets: Annotated[str, typer.Option(help="Candidate buckets (comma-separated, of 500,1000,2000).")] = (
        ",".join(map(str, BUCKETS))
    ),
    over: Annotated[
        str, typer.Option("--overload", help="Offered QPS past capacity, every step run (comma-separated).")
    ] = "100,150",
    serve_mode: Annotated[
        bool, typer.Option(hidden=True, help="Internal: measure Ray Serve into --out (JSON).")
    ] = False,
) -> None:
    """Open-loop load on Ray Serve and on one uvicorn process; the bare ranker beside."""
    from pipelines.common.runtime import setup_logging
    from serve.auth import TokenAuth

    setup_logging()
    data_dir = data_dir.resolve()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    build_world(data_dir)
    viewers = {b: v for b, v in pick_viewers(data_dir).items() if str(b) in buckets.split(",")}
    print({b: len(v) for b, v in viewers.items()}, flush=True)
    secret = os.environ.get("BENCH_SECRET") or secrets.token_urlsafe(32)
    auth = TokenAuth(secret)
    tokens = {u: auth.mint(u, ttl_s=7200) for us in viewers.values() for u in us}
    steps = [float(r) for r in rates.split(",")]
    past = [float(r) for r in over.split(",") if r]
    if serve_mode:  # in its own process: Ray Serve reads its settings at import and start
        out.write_text(json.dumps(serve_rows(data_dir, secret, tokens, viewers, seconds, steps, past)))
        return
    bare = bare_forward(data_dir, viewers)
    print(bare, flush=True)
    rows: dict[str, dict] = {}
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, "-m", "bench.serve_latency", "--data-dir", str(data_dir), "--serve-mode"]
        cmd += ["--seconds", str(seconds), "--rates", rates, "--buckets", buckets, "--overload", over]
        subprocess.run([*cmd, "--out", f.name], check=True, env={**os.environ, "BENCH_SECRET": secret})
        rows["serve"] = json.loads(Path(f.name).read_text())
    rows["plain"] = plain_rows(data_dir, secret, tokens, viewers, seconds, steps, past)
    raw = data_dir / "serve_latency.json"  # every step and the autoscaling trace, for a second look
    raw.write_text(json.dumps(rows))
    text = section(rows, bare, seconds, " ".join(["python -m bench.serve_latency", *sys.argv[1:]]))
    write_section(out, text)
    print(text)


if __name__ == "__main__":
    typer.run(main)
