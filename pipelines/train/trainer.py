"""Ray Train: the TorchTrainer over Ray Data shards of the train and validation splits."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

from pipelines.common.config import TrainConfig
from pipelines.train.loop import train_loop
from pipelines.train.setup import build_setup

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- the driver
def run_name(cfg: TrainConfig, data_dir: Path, resume: bool) -> str:
    """The Ray Train run name: ``<experiment>``, or ``<experiment>-YYYYmmdd-HHMMSS`` when that exists;
    with ``resume``, the experiment's most recently active run."""
    storage = (data_dir / "train_runs").resolve()
    if resume:
        pattern = re.compile(re.escape(cfg.experiment) + r"(-\d{8}-\d{6})?")
        runs = [p for p in storage.glob(f"{cfg.experiment}*") if p.is_dir() and pattern.fullmatch(p.name)]
        return max(runs, key=lambda p: p.stat().st_mtime).name if runs else cfg.experiment
    if (storage / cfg.experiment).exists():
        return f"{cfg.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
    return cfg.experiment


def train(
    cfg: TrainConfig,
    data_dir: Path,
    resume: bool = False,
    name: str | None = None,
    tracking: dict[str, str] | None = None,
) -> Any:
    """Run the TorchTrainer; returns the Ray Train ``Result`` (its checkpoint holds ``model.pt``).

    ``tracking`` (``{"uri", "run_id"}``) makes rank 0 log progress into that MLflow run.
    """
    import ray
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    setup = build_setup(data_dir, cfg)
    columns = [
        *setup.layout.dense,
        *setup.layout.vectors,
        *setup.layout.sparse,
        *setup.layout.bias,
        "click",
        "like",
        "comment",
        "share",
        "hide",
        "skip",
        "dwell_ms",
        "sample_weight",
    ]
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.use_datasource_v2 = False
    # Read tasks ask for a quarter CPU: on a small cluster that also serves the feed (make retrain), the
    # train workers and Serve replicas leave no node a whole CPU, and whole-CPU reads would starve training.
    datasets = {
        split: ray.data.read_parquet(
            str(data_dir / "features" / split),
            columns=columns,
            partitioning=None,
            ray_remote_args={"num_cpus": 0.25},
        )
        for split in ("train", "valid")
    }
    # Files are written day by day and viewer by viewer: mix the blocks, then shuffle within a buffer.
    datasets["train"] = datasets["train"].randomize_block_order(seed=cfg.optim.seed)
    use_gpu = cfg.distributed.use_gpu
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) >= cfg.distributed.num_workers
    storage = (data_dir / "train_runs").resolve()
    name = name or run_name(cfg, data_dir, resume)
    trainer_kwargs: dict[str, Any] = dict(
        train_loop_config={"setup": setup, "use_gpu": use_gpu, "tracking": tracking},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.distributed.num_workers,
            use_gpu=use_gpu,
            resources_per_worker=None if use_gpu else {"CPU": cfg.distributed.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=cfg.distributed.max_failures),
            # Ray Train's own INFO lines (every report, every checkpoint) would drown rank 0's progress.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # type: ignore[call-arg]
            # The best epoch by validation loss is kept (and published); the latest is kept for resuming.
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="valid/loss", checkpoint_score_order="min"
            ),
        ),
        datasets=datasets,
    )
    trainer = TorchTrainer(train_loop, **trainer_kwargs)
    result = trainer.fit()
    log.info("trained: %s", {k: v for k, v in (result.metrics or {}).items() if isinstance(v, int | float)})
    return result


def best_checkpoint(result: Any) -> Path:
    """The kept checkpoint with the lowest validation loss (the latest when none is scored)."""
    scored = [(m["valid/loss"], c) for c, m in (result.best_checkpoints or []) if "valid/loss" in m]
    return Path(min(scored, key=lambda x: x[0])[1].path if scored else result.checkpoint.path)
