"""Kill a feed replica under load and measure what clients saw: ``python -m cluster.chaos`` (after
``make demo``), and the chaos test in ``tests/serving/test_availability.py``.

Clients (threads, each a closed loop of ``GET /feed/{user}`` over keep-alive connections) read the feed;
after ``before_s`` one ``FeedIngress`` replica is killed (``ray.kill``: the process dies at once, as on a
crash or an OOM kill) and the load goes on for ``after_s``. Reported: requests, failed requests (anything
but 200, or no answer), the longest gap between two completed responses from a second before the kill to
the end, and how long Serve took to have every replica running again.

What keeps the failures at zero is HAProxy in front of the replicas (:mod:`serve.runtime`): a request the
dead replica refused or dropped unanswered is sent to another, and live traffic marks it down at once.
"""

from __future__ import annotations

import collections
import itertools
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import typer

REPLICA_PREFIX = "SERVE_REPLICA::"


@dataclass
class KillReport:
    """What clients saw around one replica kill."""

    clients: int
    requests: int
    failed: int
    statuses: dict[str, int]
    longest_gap_s: float  # between consecutive completed responses, from 1 s before the kill
    recovery_s: float | None  # kill → every replica running again (None: not within the wait)
    p50_ms: float
    p99_ms: float
    killed: str
    replicas: int
    errors: list[str] = field(default_factory=list)  # a few, for the reader


def replica_names(app: str, deployment: str = "FeedIngress") -> list[str]:
    """The Ray actor names of a deployment's running replicas (namespace ``serve``)."""
    import ray

    prefix = f"{REPLICA_PREFIX}{app}#{deployment}#"
    return sorted(
        a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)
    )


def kill_replica(name: str) -> None:
    import ray

    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)


def running_replicas(app: str, deployment: str = "FeedIngress") -> int:
    """Replicas Serve reports RUNNING for the deployment."""
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or deployment not in status.deployments:
        return 0
    states = status.deployments[deployment].replica_states
    return sum(int(n) for state, n in states.items() if str(getattr(state, "value", state)) == "RUNNING")


def kill_under_load(
    base: str,
    users: Sequence[int],
    headers: Callable[[int], dict[str, str]],
    app: str,
    clients: int = 8,
    before_s: float = 3.0,
    after_s: float = 10.0,
    recovery_timeout_s: float = 120.0,
) -> KillReport:
    """Run ``clients`` closed-loop readers of ``base``, kill one replica of ``app``'s FeedIngress after
    ``before_s``, keep reading ``after_s`` more, then wait for the replica count to recover."""
    import requests

    replicas = replica_names(app)
    if len(replicas) < 2:
        raise RuntimeError(f"{app}: {len(replicas)} FeedIngress replica(s); killing one needs at least 2")
    done: list[tuple[float, float, int]] = []  # (completed at, latency s, status; 0: no answer)
    errors: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def reader(k: int) -> None:
        session = requests.Session()
        i = k
        while not stop.is_set():
            user = users[i % len(users)]
            i += clients
            t0 = time.perf_counter()
            try:
                r = session.get(
                    f"{base}/feed/{user}", params={"limit": 10}, headers=headers(user), timeout=30
                )
                status = r.status_code
                if status != 200 and len(errors) < 5:
                    errors.append(f"{status}: {r.text[:200]}")
            except requests.RequestException as e:
                status = 0
                if len(errors) < 5:
                    errors.append(f"{type(e).__name__}: {e}"[:200])
            t1 = time.perf_counter()
            with lock:
                done.append((t1, t1 - t0, status))

    threads = [threading.Thread(target=reader, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    recovery: float | None = None
    try:
        time.sleep(before_s)
        victim = replicas[0]
        killed_at = time.perf_counter()
        kill_replica(victim)
        time.sleep(after_s)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    deadline = killed_at + recovery_timeout_s
    while time.perf_counter() < deadline:
        if running_replicas(app) >= len(replicas) and victim not in replica_names(app):
            recovery = time.perf_counter() - killed_at
            break
        time.sleep(0.25)
    times = sorted(t for t, _, _ in done if t >= killed_at - 1.0)
    edges = [killed_at - 1.0, *times, killed_at + after_s]
    latencies = sorted(lat * 1000 for _, lat, s in done if s == 200)
    statuses = collections.Counter(str(s) for _, _, s in done)
    return KillReport(
        clients=clients,
        requests=len(done),
        failed=sum(1 for _, _, s in done if s != 200),
        statuses=dict(statuses),
        longest_gap_s=max(b - a for a, b in itertools.pairwise(edges)),
        recovery_s=recovery,
        p50_ms=statistics.median(latencies) if latencies else float("nan"),
        p99_ms=latencies[int(0.99 * (len(latencies) - 1))] if latencies else float("nan"),
        killed=victim,
        replicas=len(replicas),
        errors=errors,
    )


def against_local_cluster(
    state_dir: Path,
    data_dir: Path,
    app: str = "feed",
    clients: int = 8,
    rounds: int = 3,
    after_s: float = 10.0,
) -> list[KillReport]:
    """:func:`kill_under_load` ``rounds`` times against the running local cluster (``make demo``), each
    after the previous kill has recovered, over the demo's users."""
    import os

    from cluster.local import LocalCluster

    cluster = LocalCluster(state_dir)
    env = cluster.client_env()
    # before Ray is imported: it reads how to authenticate once
    os.environ.update({k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")})
    import ray
    import yaml

    from serve.auth import TokenAuth
    from serve.retrieval import RetrievalConfig, retrieve
    from serve.store import EmbeddedStore

    if not ray.is_initialized():
        ray.init(address=cluster.state["ray"]["address"], log_to_driver=False)
    deployed = state_dir / "serve.yaml"  # what cluster.demo deployed
    http = yaml.safe_load(deployed.read_text()).get("http_options", {}) if deployed.exists() else {}
    base = f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"
    auth = TokenAuth(cluster.jwt_secret())
    store = EmbeddedStore.load(data_dir)
    now = store.as_of_s + 60
    users = [
        int(u)
        for u in store.snapshot.users[:400].tolist()
        if len(retrieve(store, int(u), now, RetrievalConfig()).post_ids) >= 5
    ]
    reports = []
    for _ in range(rounds):
        report = kill_under_load(
            base, users, lambda u: {"Authorization": f"Bearer {auth.mint(u)}"}, app, clients, after_s=after_s
        )
        reports.append(report)
        if report.recovery_s is None:
            break
    return reports


def main(
    state_dir: Annotated[Path, typer.Option(help="The local cluster's state dir.")] = Path(".cluster"),
    data_dir: Annotated[Path, typer.Option(help="The demo's data dir (its users read the feed).")] = Path(
        "data/demo"
    ),
    app: Annotated[str, typer.Option(help="The Serve application.")] = "feed",
    clients: Annotated[int, typer.Option(help="Concurrent closed-loop readers.")] = 8,
    rounds: Annotated[int, typer.Option(help="Kills, one after the other (each after recovery).")] = 3,
    after_s: Annotated[float, typer.Option(help="Seconds of load after each kill.")] = 10.0,
) -> None:
    """Kill one FeedIngress replica of the running local cluster (``make demo``) under load, ``rounds``
    times; print what the clients saw, one JSON line per kill."""
    import json

    reports = against_local_cluster(state_dir, data_dir, app, clients, rounds, after_s)
    for report in reports:
        typer.echo(json.dumps(asdict(report)))
    if any(r.failed or r.recovery_s is None for r in reports):
        raise SystemExit(1)


if __name__ == "__main__":
    typer.run(main)
