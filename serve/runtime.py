"""How the Ray cluster that hosts the feed must be started: Ray Serve's request path, chosen for latency.

Ray Serve reads these settings from the environment of its controller and replicas, so they are set where
Ray starts (before ``ray.init`` / ``ray start``; :func:`pipelines.common.runtime.ray_session` takes them as
``env``, and the cluster scripts export them):

- ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: Ray's throughput-optimized mode. Its main part is **direct
  ingress**: each FeedIngress replica serves HTTP itself (ports from 30000) instead of behind the Python
  Serve proxy, which on a 2-core machine cost ~14 ms and a third of the throughput per feed (see
  bench/RESULTS.md); it also runs user code on the replica's event loop and uses gRPC between
  deployments.
- With an ``haproxy`` binary (``apt install haproxy``; or ``RAY_SERVE_HAPROXY_BINARY_PATH``), HAProxy takes
  the Serve HTTP port and balances over the replicas' direct ports (``RAY_SERVE_ENABLE_HA_PROXY=1``).
  Without it the Python proxy still answers on the Serve HTTP port (slower), and each replica's own port
  is the fast path.

``RAY_SERVE_*`` variables already in the environment win, so any of this can be switched off.
"""

from __future__ import annotations

import os
import shutil


def ray_serve_env(drain_s: float | None = None) -> dict[str, str]:
    """The environment variables to start Ray with for serving the feed.

    ``drain_s``: how long a stopping ingress replica keeps answering (Ray's default 30 s lets a load
    balancer notice; tests use less).
    """
    env = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    haproxy = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH") or shutil.which("haproxy")
    if haproxy:
        env |= {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_BINARY_PATH": haproxy}
    if drain_s is not None:
        env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = str(drain_s)
    return {k: os.environ.get(k, v) for k, v in env.items()}
