"""Open-loop load against the feed: Poisson arrivals at a fixed offered rate, in a process of its own.

A closed-loop client (send, wait, send again) on a saturated machine measures its own queue: p50 ≈
clients / QPS whatever the server does. Here requests *arrive* at the offered rate whether or not earlier
ones have been answered (exponential gaps, seeded), as users do and as MLPerf's server scenario sends
queries. A request's latency counts from its scheduled arrival, so a client that falls behind its own
schedule (coordinated omission) still charges the wait to the server; how far behind it fell is reported
(``lag_p99_ms``), and so is the CPU this process used, since it shares the cores with the server.

``python -m bench.loadgen --base URL --users-file F --qps 40 --seconds 15`` prints one JSON line: the
step's percentiles, status counts, fallbacks and the per-stage medians of the feed's own
``Server-Timing``. :func:`step` runs it as a subprocess; :func:`sweep` steps the offered load up until the
tail passes a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

#: The bounds whose highest sustained QPS a sweep reports.
BOUNDS_MS = (50.0, 100.0)


def server_timing(header: str) -> dict[str, float]:
    """``retrieval;dur=3.1, ranking;dur=7.2`` → ``{"retrieval": 3.1, "ranking": 7.2}``."""
    out = {}
    for part in header.split(","):
        name, _, rest = part.strip().partition(";")
        for attr in rest.split(";"):
            k, _, v = attr.strip().partition("=")
            if k == "dur" and name:
                with contextlib.suppress(ValueError):
                    out[name] = float(v)
    return out


def poisson_arrivals(qps: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival times in ``[0, seconds)`` of a Poisson process of rate ``qps`` (exponential gaps drawn
    until they cover the whole step)."""
    gaps = rng.exponential(1.0 / qps, int(qps * seconds * 1.5) + 16)
    while gaps.sum() < seconds:
        gaps = np.concatenate([gaps, rng.exponential(1.0 / qps, len(gaps))])
    arrivals = np.cumsum(gaps)
    return arrivals[arrivals < seconds]


def schedule_arrivals(schedule: list[tuple[float, float]], rng: np.random.Generator) -> np.ndarray:
    """Arrival times of consecutive Poisson segments ``(qps, seconds)``: a load step within one run."""
    parts, start = [], 0.0
    for qps, seconds in schedule:
        parts.append(start + poisson_arrivals(qps, seconds, rng))
        start += seconds
    return np.concatenate(parts) if parts else np.zeros(0)


async def _run(
    base: str,
    users: list[tuple[int, str]],
    schedule: list[tuple[float, float]],
    timeout_s: float,
    seed: int,
    trace: bool = False,
) -> dict[str, Any]:
    import aiohttp

    rng = np.random.default_rng(seed)
    arrivals = schedule_arrivals(schedule, rng)
    qps, seconds = schedule[-1][0], sum(s for _, s in schedule)
    requests: list[tuple[float, float, str]] = []  # (arrival s, latency ms, outcome), with trace
    picks = rng.integers(0, len(users), len(arrivals))
    latency: list[float] = []  # answered (200) requests
    every: list[float] = []  # every request: a failure at the time it failed, a timeout at timeout_s
    lag: list[float] = []
    status: dict[str, int] = {}
    fallbacks = 0
    stages: dict[str, list[float]] = {}
    retry_after: list[float] = []

    async def one(session: aiohttp.ClientSession, at: float, user: int, token: str, t0: float) -> None:
        nonlocal fallbacks
        lag.append(time.perf_counter() - (t0 + at))
        try:
            async with session.get(
                f"{base}/feed/{user}",
                params={"limit": "20"},
                headers={"Authorization": f"Bearer {token}"},
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as r:
                body = await r.read()
                key = str(r.status)
                if r.status == 200:
                    fallbacks += bool(json.loads(body).get("fallback"))
                    for k, v in server_timing(r.headers.get("Server-Timing", "")).items():
                        stages.setdefault(k, []).append(v)
                elif "Retry-After" in r.headers:
                    with contextlib.suppress(ValueError):  # seconds, or an HTTP date (not counted)
                        retry_after.append(float(r.headers["Retry-After"]))
        except TimeoutError:
            key = "timeout"
        except Exception as e:  # any failure is a counted outcome, never the end of the step
            key = type(e).__name__
        status[key] = status.get(key, 0) + 1
        took = time.perf_counter() - (t0 + at)
        every.append(timeout_s if key == "timeout" else took)
        if trace:
            requests.append((round(at, 4), round(took * 1000, 2), key))
        if key == "200":
            latency.append(took)

    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = []
        started_at = time.time()  # wall clock of arrival time 0 (to line the trace up with other clocks)
        t0 = time.perf_counter()
        for at, k in zip(arrivals.tolist(), picks.tolist(), strict=True):
            delay = t0 + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            user, token = users[k]
            tasks.append(asyncio.create_task(one(session, at, user, token, t0)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    lat = np.array(latency) * 1000
    sent = len(arrivals)

    def pct(a: np.ndarray, q: float) -> float:
        return float(np.percentile(a, q)) if len(a) else float("nan")

    return {
        **({"trace": sorted(requests), "started_at": started_at} if trace else {}),
        "nominal_qps": qps,
        "offered_qps": sent / seconds,  # the arrivals this step actually drew
        "sent": sent,
        "ok": int(status.get("200", 0)),
        "answered_qps": status.get("200", 0) / seconds,
        "status": status,
        "fallbacks": fallbacks,
        "p50": pct(lat, 50),
        "p90": pct(lat, 90),
        "p99": pct(lat, 99),
        "p99_all": pct(np.array(every) * 1000, 99),
        "lag_p99_ms": pct(np.array(lag) * 1000, 99),
        "stages_p50_ms": {k: float(np.median(v)) for k, v in sorted(stages.items())},
        "retry_after_s": float(np.median(retry_after)) if retry_after else None,
        "wall_s": wall,
    }


def step(
    base: str,
    users: list[tuple[int, str]],
    qps: float,
    seconds: float,
    timeout_s: float = 10.0,
    seed: int = 0,
    schedule: list[tuple[float, float]] | None = None,
    trace: bool = False,
) -> dict[str, Any]:
    """One load step from a separate process (its own event loop and GIL); adds the CPU it used as
    ``client_cpu`` (cores, averaged over the step). ``schedule``: segments ``(qps, seconds)`` instead of
    one rate; ``trace``: every request's ``(arrival s, latency ms, outcome)`` as ``trace``."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(users, f)
    cmd = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--base",
        base,
        "--users-file",
        f.name,
        "--qps",
        str(qps),
        "--seconds",
        str(seconds),
        "--timeout-s",
        str(timeout_s),
        "--seed",
        str(seed),
        *(["--schedule", ",".join(f"{q}:{t}" for q, t in schedule)] if schedule else []),
        *(["--trace"] if trace else []),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    Path(f.name).unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def sweep(
    base: str,
    users: list[tuple[int, str]],
    rates: list[float],
    seconds: float,
    stop_p99_ms: float = 1000.0,
    log: Any = print,
) -> list[dict[str, Any]]:
    """Steps of rising offered load, until a step's p99 passes ``stop_p99_ms`` or 5% of it fails."""
    out = []
    for i, qps in enumerate(rates):
        r = step(base, users, qps, seconds, seed=i)
        out.append(r)
        log(
            f"  offered {r['offered_qps']:>5.1f} QPS: answered {r['answered_qps']:.1f}, "
            f"p50 {r['p50']:.1f} / p99 {r['p99']:.1f} ms, status {r['status']}, "
            f"fallbacks {r['fallbacks']}, client CPU {r['client_cpu']:.2f}"
        )
        failed = r["sent"] - r["ok"]
        if not r["p99"] <= stop_p99_ms or failed > 0.05 * r["sent"]:
            break
    return out


def capacity(steps: list[dict[str, Any]], bound_ms: float, max_failed: float = 0.0) -> float | None:
    """The offered QPS of the last step of the unbroken run, from the lowest rate up, whose answered
    requests' p99 was within ``bound_ms`` and that failed at most ``max_failed`` of its requests (an
    error, a shed request or a fallback feed: 0, everything answered in full); None if the lowest step
    did not. A passing step above a failing one is noise, not capacity."""
    best = None
    for s in sorted(steps, key=lambda s: s["offered_qps"]):
        failed = s["sent"] - s["ok"] + s["fallbacks"]
        if not (s["p99"] <= bound_ms and failed <= max_failed * s["sent"]):
            break
        best = s["offered_qps"]
    return best


def busy_s() -> float:
    """CPU seconds the whole machine has spent busy (every core, everything but idle and I/O wait)."""
    import psutil

    t = psutil.cpu_times()
    return float(sum(v for k, v in t._asdict().items() if k not in ("idle", "iowait", "guest", "guest_nice")))


def main(
    base: Annotated[str, typer.Option()],
    users_file: Annotated[Path, typer.Option(help="JSON list of [user id, bearer token].")],
    qps: Annotated[float, typer.Option()] = 10.0,
    seconds: Annotated[float, typer.Option()] = 15.0,
    schedule: Annotated[
        str, typer.Option(help="Instead of --qps/--seconds: segments 'qps:seconds,...' (a load step).")
    ] = "",
    trace: Annotated[bool, typer.Option(help="Every request's (arrival s, latency ms, outcome).")] = False,
    timeout_s: Annotated[float, typer.Option()] = 10.0,
    seed: int = 0,
) -> None:
    import psutil

    users = [(int(u), str(t)) for u, t in json.loads(users_file.read_text())]
    segments = (
        [(float(q), float(t)) for q, t in (p.split(":") for p in schedule.split(","))] if schedule else []
    )
    me = psutil.Process()
    c0, b0, t0 = me.cpu_times(), busy_s(), time.perf_counter()
    out = asyncio.run(_run(base, users, segments or [(qps, seconds)], timeout_s, seed, trace))
    c1, b1, wall = me.cpu_times(), busy_s(), time.perf_counter() - t0
    client = c1.user + c1.system - c0.user - c0.system
    out["client_cpu"] = client / wall
    out["box_cpu"] = (b1 - b0) / wall  # every process of the machine: servers, Ray, HAProxy, this client
    # CPU the machine spent per answered feed, the client's own left out (the servers' cost of a feed)
    out["server_cpu_ms_per_feed"] = (b1 - b0 - client) * 1000 / out["ok"] if out["ok"] else float("nan")
    print(json.dumps(out))


if __name__ == "__main__":
    typer.run(main)
