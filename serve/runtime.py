"""How the Ray cluster that hosts the feed must be started: Ray Serve's request path, chosen for latency.

Ray Serve reads these settings from the environment of its controller and replicas, so they are set where
Ray starts (before ``ray.init`` / ``ray start``; :func:`pipelines.common.runtime.ray_session` takes them as
``env``, and the cluster scripts export them):

- ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: Ray's throughput-optimized mode. Its main part is **direct
  ingress**: each FeedIngress replica serves HTTP itself (ports from 30000) instead of behind the Python
  Serve proxy, which on a 2-core machine cost ~14 ms and a third of the throughput per feed (see
  bench/RESULTS.md); it also runs user code on the replica's event loop and uses gRPC between
  deployments.
- With an ``haproxy`` binary (``apt install haproxy``, which ``make setup`` does where it can; or
  ``RAY_SERVE_HAPROXY_BINARY_PATH``), HAProxy takes the Serve HTTP port and balances over the replicas'
  direct ports (``RAY_SERVE_ENABLE_HA_PROXY=1``). It is also what keeps the feed up when a replica dies:
  a request whose replica refused the connection or closed it without an answer is sent to another one
  (``retry-on conn-failure empty-response``, 3 retries, ``option redispatch``), and live traffic marks a
  dead replica down at its first failed connection. Requests are balanced by their path (``balance
  uri``), so a user's pages come from the replica that keeps their ranked list; a replayed write is
  stored once when it carries event ids or an ``Idempotency-Key``. Without HAProxy the Python proxy
  still answers on the Serve HTTP port (slower; a dying replica's in-flight requests fail; with several
  replicas a next page may land on one that lacks the list: 410), and each replica's own port is the
  fast path.
- ``RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S=2``: replicas report their ongoing requests to the
  autoscaler every 2 s instead of 10, so ``autoscaling_config`` can react to a load step within seconds
  (Ray 2.60 reads the config's ``metrics_interval_s``, which configs/serve.yaml sets to 2; this variable
  replaces it in later releases).
- HAProxy's files (config, admin socket, server state) go to a directory of their own and its stats and
  metrics to free ports, so two Ray instances on one machine (a test session and a local cluster) do not
  share them.

``RAY_SERVE_*`` policy variables already in the environment win, so any of this can be switched off.
"""

from __future__ import annotations

import gc
import os
import shutil
import socket
import tempfile
from pathlib import Path

#: HAProxy's ``retry-on``: a connection refused, or closed with no answer (the replica died mid-request).
#: A replayed write is stored once when it carries event ids or an ``Idempotency-Key`` (serve.api).
RETRY_ON = "conn-failure empty-response"
RETRIES = 3
#: A user's requests go to one replica (the path ``/feed/{user}`` hashed): the ranked list behind a
#: cursor lives in the replica that ranked it, so the next page must find it there.
BALANCE = "uri"
#: Longest directory for HAProxy's admin socket (Ray puts it in ``<dir>/<56 hex>/admin.sock``).
MAX_SOCKET_DIR = 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_serve_env(drain_s: float | None = None, state_dir: Path | None = None) -> dict[str, str]:
    """The environment variables to start Ray with for serving the feed.

    ``drain_s``: how long a stopping ingress replica keeps answering (Ray's default 30 s lets a load
    balancer notice; tests use less). ``state_dir``: where HAProxy keeps its files (default: a new
    temporary directory).
    """
    env = {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        # Replicas report their load to the autoscaler every 2 s (Ray's default 10 s). Ray 2.60 still
        # reads autoscaling_config.metrics_interval_s (configs/serve.yaml sets it); this variable replaces
        # that field in later releases.
        "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "2",
    }
    instance: dict[str, str] = {}  # this Ray instance's own files and ports: never inherited
    haproxy = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH") or shutil.which("haproxy")
    if haproxy:
        env |= {
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_HAPROXY_BINARY_PATH": haproxy,
            "RAY_SERVE_HAPROXY_RETRY_ON": RETRY_ON,
            "RAY_SERVE_HAPROXY_RETRIES": str(RETRIES),
            "RAY_SERVE_HAPROXY_BALANCE_ALGORITHM": BALANCE,
            # the first failed connection marks a replica down (Ray's default waits for 3), so a retry of
            # a request hashed to a dead replica goes to a live one
            "RAY_SERVE_HAPROXY_OBSERVE_ERROR_LIMIT": "1",
        }
        files = state_dir or Path(tempfile.mkdtemp(prefix="haproxy-serve-"))
        files.mkdir(parents=True, exist_ok=True)
        # Ray adds a 56-character node directory under the socket's; a Unix socket path has 107 bytes
        sockets = files if len(str(files)) <= MAX_SOCKET_DIR else Path(tempfile.mkdtemp(prefix="hap-"))
        instance = {
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(files / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(sockets / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(files),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(files / "server-state"),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
        }
    if drain_s is not None:
        env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = str(drain_s)
    return {k: os.environ.get(k, v) for k, v in env.items()} | instance


def haproxy_available() -> bool:
    """Whether Serve will run behind HAProxy (what survives a replica's death without failed requests)."""
    return bool(os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH") or shutil.which("haproxy"))


def settle_heap() -> None:
    """Collect, then move every object alive now to the garbage collector's permanent generation
    (``gc.freeze``): the libraries, the models, the snapshot a replica loaded at start or a swap.

    Ray freezes the heap when a worker starts, before a replica imports torch and MLflow and loads its
    models: ~660,000 objects the collector would otherwise walk at every full pass. Measured: 350 ms per
    ``gc.collect()`` in a replica's process, a pass Ray also triggers from a thread of its own, holding the
    GIL while requests wait; ~0 ms after this. Call it at the end of start-up and after a swap, when the
    objects that will live as long as the process exist.
    """
    gc.collect()
    gc.freeze()
