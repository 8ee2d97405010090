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
own stage timings (``Server-Timing``). The capacity of a system is the highest offered rate answered in
full (no error, no fallback) with p99 within 50 ms (and within 100 ms). Writes the "Serving under load
(issue 18)" section of ``--out``.
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
    for b in BUCKETS:
        if not viewers[b]:
            continue
        users = _users(viewers[b], tokens)
        step(base, users, 5.0, 3.0)  # warm: models, caches, HAProxy's view of the replicas
        print(f" ~{b} candidates", flush=True)
        out[b] = sweep(base, users, rates, seconds)
    return out


def serve_rows(data_dir: Path, secret: str, tokens: dict, viewers: dict, seconds: float, rates: list) -> dict:
    """The app as configs/serve.yaml deploys it, on a Ray started for serving."""
    from ray import serve

    from pipelines.common.runtime import ray_session
    from serve.app import compose
    from serve.config import load_serve_yaml
    from serve.runtime import ray_serve_env

    doc, _ = load_serve_yaml(REPO / "configs" / "serve.yaml")
    deployments = doc["applications"][0].get("deployments")
    with ray_session(env=ray_serve_env(drain_s=1.0)):
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        print("Ray Serve (configs/serve.yaml)", flush=True)
        app = compose(serve_args(data_dir, secret, "ingress"), deployments)
        serve.run(app, name="feed", route_prefix="/")
        out = sweeps(f"http://127.0.0.1:{port}", tokens, viewers, seconds, rates)
        serve.shutdown()
    return out


def plain_rows(data_dir: Path, secret: str, tokens: dict, viewers: dict, seconds: float, rates: list) -> dict:
    import requests

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
        return sweeps(f"http://127.0.0.1:{port}", tokens, viewers, seconds, rates)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


NAMES = {"serve": "Ray Serve (configs/serve.yaml)", "plain": "plain uvicorn, 1 process"}


def section(rows: dict[str, dict], bare: dict[int, dict[str, float]], seconds: float, cmd: str) -> str:
    from bench.loadgen import BOUNDS_MS, capacity

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
            f"direct ingress behind HAProxy (`{shutil.which('haproxy')}`)."
            if shutil.which("haproxy")
            else "direct ingress, Serve's Python proxy in front (no haproxy installed)."
        ),
        "",
        "Capacity: the offered QPS (arrivals drawn, per second) of the last step of the unbroken run from "
        "the lowest rate up that was answered in full (no error, no fallback) with p99 within the bound.",
        "",
        "| system | candidates | " + " | ".join(f"QPS at p99 ≤ {b:.0f} ms" for b in BOUNDS_MS) + " |",
        "|---|---|" + "---:|" * len(BOUNDS_MS),
    ]
    for key, by_bucket in rows.items():
        for b, steps in by_bucket.items():
            caps = [capacity(steps, bound) for bound in BOUNDS_MS]
            cells = " | ".join("–" if c is None else f"{c:.1f}" for c in caps)
            lines.append(f"| {NAMES[key]} | ~{b} | {cells} |")
    all_steps = [s for by in rows.values() for st in by.values() for s in st]
    stage_names = sorted({k for s in all_steps for k in s["stages_p50_ms"]})
    lines += [
        "",
        "Every step (latency from the scheduled arrival; stages: the medians of the feed's `Server-Timing`, "
        "answered requests only; client CPU: cores the load generator used):",
        "",
        "| system | candidates | offered QPS | answered QPS | p50 ms | p90 ms | p99 ms | errors | "
        "fallbacks | client CPU | " + " | ".join(f"{k} ms" for k in stage_names) + " |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(stage_names),
    ]
    for key, by_bucket in rows.items():
        for b, steps in by_bucket.items():
            for s in steps:
                errors = s["sent"] - s["ok"]
                stages = " | ".join(f"{s['stages_p50_ms'].get(k, float('nan')):.1f}" for k in stage_names)
                lines.append(
                    f"| {NAMES[key]} | ~{b} | {s['offered_qps']:.1f} | {s['answered_qps']:.1f} | "
                    f"{s['p50']:.1f} | {s['p90']:.1f} | {s['p99']:.1f} | {errors} | {s['fallbacks']} | "
                    f"{s['client_cpu']:.2f} | {stages} |"
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


def main(
    data_dir: Annotated[Path, typer.Option(help="Bench world (built on first use).")] = Path(
        "data/bench-serve"
    ),
    out: Annotated[Path, typer.Option(help="Markdown file to write the section into.")] = Path(
        "bench/RESULTS.md"
    ),
    seconds: Annotated[float, typer.Option(help="Seconds per load step.")] = 30.0,
    rates: Annotated[str, typer.Option(help="Offered QPS steps (comma-separated).")] = DEFAULT_RATES,
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
    viewers = pick_viewers(data_dir)
    print({b: len(v) for b, v in viewers.items()}, flush=True)
    secret = os.environ.get("BENCH_SECRET") or secrets.token_urlsafe(32)
    auth = TokenAuth(secret)
    tokens = {u: auth.mint(u, ttl_s=7200) for us in viewers.values() for u in us}
    steps = [float(r) for r in rates.split(",")]
    if serve_mode:  # in its own process: Ray Serve reads its settings at import and start
        out.write_text(json.dumps(serve_rows(data_dir, secret, tokens, viewers, seconds, steps)))
        return
    bare = bare_forward(data_dir, viewers)
    print(bare, flush=True)
    rows: dict[str, dict] = {}
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, "-m", "bench.serve_latency", "--data-dir", str(data_dir), "--serve-mode"]
        cmd += ["--seconds", str(seconds), "--rates", rates, "--out", f.name]
        subprocess.run(cmd, check=True, env={**os.environ, "BENCH_SECRET": secret})
        rows["serve"] = {int(k): v for k, v in json.loads(Path(f.name).read_text()).items()}
    rows["plain"] = plain_rows(data_dir, secret, tokens, viewers, seconds, steps)
    text = section(rows, bare, seconds, "python -m bench.serve_latency")
    write_section(out, text)
    print(text)


if __name__ == "__main__":
    typer.run(main)
