"""Process-level plumbing for stage CLIs: logging setup and the Ray connection.

Nothing here runs at import time; each stage's ``main`` calls :func:`setup_logging` and enters
:func:`ray_session` around its work.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

log = logging.getLogger(__name__)


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr with timestamps; called by CLIs, never by library code."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class _Fbgemm(logging.Filter):
    """fbgemm_gpu logs each embedding kernel's constructor arguments (kilobytes per line) at INFO on the root
    logger: drop those, keep its warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "fbgemm_gpu" not in record.pathname


def setup_worker_logging() -> None:
    """In a Ray worker: this project's INFO lines to stderr (Ray forwards them to the driver), without
    changing the root logger's level, so Ray's own loggers keep the levels Ray gave them. TorchRec's planner
    tables and fbgemm's kernel arguments stay out (warnings still pass): they buried the progress lines."""
    logging.getLogger("torchrec").setLevel(logging.WARNING)
    root = logging.getLogger()
    if not any(isinstance(f, _Fbgemm) for f in root.filters):
        root.addFilter(_Fbgemm())
    lg = logging.getLogger("pipelines")
    if not lg.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
        lg.propagate = False


#: The environment variable that sizes batch stages' Ray tasks (see :func:`task_cpus`).
TASK_CPUS_ENV = "FEED_TASK_CPUS"


def task_cpus() -> float:
    """CPUs each Ray task (and Ray Data read, map and write task) of a batch stage asks for: 1, or
    ``$FEED_TASK_CPUS``. ``make retrain`` sets 0.25: its stages share the cluster with the feed, whose
    replicas hold fractions of every node's CPUs, and tasks that wait for a whole free CPU ran ingest 35×
    slower than beside nothing (issue 14).

    >>> os.environ[TASK_CPUS_ENV] = "0.25"; task_cpus()
    0.25
    >>> del os.environ[TASK_CPUS_ENV]; task_cpus()
    1.0
    """
    value = float(os.environ.get(TASK_CPUS_ENV, "1"))
    if not 0 < value <= 64:
        raise ValueError(f"{TASK_CPUS_ENV}={value}: CPUs per task must be in (0, 64]")
    return value


@contextlib.contextmanager
def ray_session(num_cpus: int | None = None, env: dict[str, str] | None = None) -> Iterator[None]:
    """Connect to the Ray cluster in ``RAY_ADDRESS`` (as under ``ray job submit``) or start a local one.

    Reuses a connection that is already open (tests share one Ray instance per session) and only shuts
    down what it started itself. ``env`` is exported before a local cluster starts, so Ray's own processes
    see it (e.g. :func:`serve.runtime.ray_serve_env`); a running cluster was started with its own.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        os.environ.update(env or {})
        # A local cluster: workers must import this checkout's packages, as `--working-dir .` gives
        # a real cluster.
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        ray.init(
            address="local",  # start one, even when a `ray start` cluster runs on this machine
            num_cpus=num_cpus,
            include_dashboard=True,  # also what Ray Train's state queries need (else warnings every second)
            runtime_env={
                "env_vars": {"PYTHONPATH": path},
                "worker_process_setup_hook": "pipelines.common.runtime.pin_ray_address",
            },
            log_to_driver=True,
        )
    log.info("ray: %s", ray.cluster_resources())
    # Ray's state API (Ray Train's controller asks it whether actors live) finds "the" cluster through
    # RAY_ADDRESS, else /tmp/ray/ray_current_cluster: the last `ray start` on this machine. Pinned to the
    # cluster this session uses, here and in every worker (pin_ray_address), so a local run never talks to
    # another cluster on the machine (issue 16: `make up`'s cluster got Ray Train's cleanup queries).
    previous = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    try:
        yield
    finally:
        ray.shutdown()
        if previous is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = previous


def pin_ray_address() -> None:
    """Worker setup hook of a local session: this worker's cluster is the one Ray's address lookups find."""
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
