"""The simulate stage: simulated users against a deployed feed, reported per arm (and logged to MLflow)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.common.config import DataConfig
from pipelines.simulate.report import markdown, report
from pipelines.simulate.users import SimConfig, Truth, simulate_user


def run(
    url: str,
    data_dir: Path,
    data_cfg: DataConfig,
    secret: str,
    cfg: SimConfig,
    exclude: set[int] | None = None,
) -> dict[str, Any]:
    """Run the simulation against the feed at ``url``; returns the report (see :func:`report`; its
    ``user_ids`` are the users simulated). Users in ``exclude`` are not sampled: repeated simulations on
    one feed then measure users whose feeds no earlier simulation changed (seen, hidden)."""
    from serve.auth import TokenAuth
    from serve.store import EmbeddedStore

    truth = Truth(data_cfg)
    known = EmbeddedStore.load(data_dir).user_ids()
    known = known[np.isin(known, truth.world.user_ids)]
    candidates = known[truth.has_friends(known)]
    if exclude:
        candidates = candidates[~np.isin(candidates, list(exclude))]
    rng = np.random.default_rng(cfg.seed)
    chosen = rng.choice(candidates, size=min(cfg.users, len(candidates)), replace=False)
    auth = TokenAuth(secret)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(cfg.concurrency) as pool:
        futures = [
            pool.submit(
                simulate_user,
                url,
                auth.mint(int(u), ttl_s=3600),
                int(u),
                truth,
                cfg,
                cfg.seed * 1_000_003 + int(u),
            )
            for u in chosen.tolist()
        ]
        users = [f.result() for f in futures]
    rep = report(users, cfg)
    rep["seconds"] = time.perf_counter() - t0
    rep["config"] = cfg.model_dump()
    rep["user_ids"] = [int(u) for u in chosen.tolist()]
    return rep


def log_to_mlflow(rep: dict[str, Any], data_dir: Path, url: str, experiment: str = "feed-online") -> str:
    import mlflow

    from pipelines.common import tracking

    tracking.configure(data_dir)
    exp = tracking.experiment_id(experiment, data_dir)
    with mlflow.start_run(experiment_id=exp, run_name=f"simulate-{int(time.time())}") as run:
        mlflow.log_params({"url": url, **{f"sim.{k}": v for k, v in rep["config"].items()}})
        for a, m in rep["arms"].items():
            mlflow.log_metrics({f"{a}/{k}": float(v) for k, v in m.items() if isinstance(v, int | float)})
            mlflow.set_tag(f"{a}.versions", ",".join(m["versions"]))
        for a, diffs in rep["vs_control"].items():
            for k, d in diffs.items():
                mlflow.log_metrics(
                    {
                        f"{a}_vs_{rep['control']}/{k}": d["diff"],
                        f"{a}_vs_{rep['control']}/{k}_lo": d["ci95"][0],
                        f"{a}_vs_{rep['control']}/{k}_hi": d["ci95"][1],
                    }
                )
        mlflow.log_dict(rep, "online/report.json")
        mlflow.log_text(markdown(rep), "online/report.md")
        return str(run.info.run_id)
