"""Ray Train, the driver's side: the TorchTrainer over Ray Data shards of the train and validation splits,
each worker running :func:`pipelines.train.loop.train_loop` on the ranker (:class:`RankerTraining`)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.common.config import TrainConfig
from pipelines.train.loop import train_loop
from pipelines.train.setup import RankerTraining, build_setup

if TYPE_CHECKING:
    import pyarrow as pa

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
    from ray.train.torch import TorchTrainer

    setup = build_setup(data_dir, cfg)
    training = RankerTraining(setup)
    data = datasets(cfg, data_dir, setup.columns, training.prepare_block)
    use_gpu = gpus_wanted(cfg)
    loop_config = {
        "model": training,
        "optim": cfg.optim,
        "sharding": cfg.distributed.sharding,
        "use_gpu": use_gpu,
        "tracking": tracking,
    }
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=scaling_config(cfg, use_gpu),
        run_config=run_config(cfg, data_dir, name or run_name(cfg, data_dir, resume)),
        datasets=data,
    )
    result = trainer.fit()
    log.info("trained: %s", {k: v for k, v in (result.metrics or {}).items() if isinstance(v, int | float)})
    return result


def datasets(
    cfg: TrainConfig, data_dir: Path, columns: list[str], prepare: Callable[[pa.Table], pa.Table]
) -> dict[str, Any]:
    """The train and validation splits as Ray Data datasets of model-ready blocks (``prepare``: the dense
    matrix and table rows, built once per block; train blocks in random order), kept in the object store
    for every epoch unless ``optim.materialize`` is off."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.use_datasource_v2 = False
    # Read tasks ask for a quarter CPU: on a small cluster that also serves the feed (make retrain), the
    # train workers and Serve replicas leave no node a whole CPU, and whole-CPU reads would starve training.
    splits = {}
    for split in ("train", "valid"):
        ds = ray.data.read_parquet(
            str(data_dir / "features" / split), columns=columns, partitioning=None, num_cpus=0.25
        )
        # At most 2 prepare tasks at a time: each new worker process imports torch and TorchRec (seconds
        # of CPU); with 0.25-CPU tasks unbounded, 8 processes paid it on 2 cores (14-20 s per split).
        ds = ds.map_batches(prepare, batch_format="pyarrow", batch_size=None, num_cpus=0.25, concurrency=2)
        splits[split] = ds.materialize() if cfg.optim.materialize else ds
    # Files are written day by day and viewer by viewer: mix the blocks, then shuffle within a buffer.
    splits["train"] = splits["train"].randomize_block_order(seed=cfg.optim.seed)
    return splits


def gpus_wanted(cfg: TrainConfig) -> bool:
    """``distributed.use_gpu``, or when unset, whether the cluster has a GPU for every worker."""
    import ray

    if cfg.distributed.use_gpu is not None:
        return cfg.distributed.use_gpu
    return bool(ray.cluster_resources().get("GPU", 0) >= cfg.distributed.num_workers)


def scaling_config(cfg: TrainConfig, use_gpu: bool) -> Any:
    """``num_workers`` workers, each with a GPU or ``cpus_per_worker`` CPUs."""
    import ray.train

    return ray.train.ScalingConfig(
        num_workers=cfg.distributed.num_workers,
        use_gpu=use_gpu,
        resources_per_worker=None if use_gpu else {"CPU": cfg.distributed.cpus_per_worker},
    )


def run_config(cfg: TrainConfig, data_dir: Path, name: str) -> Any:
    """Run ``name`` under ``D/train_runs/``: failure recovery, quiet logs, the best and the latest
    checkpoints kept."""
    import ray.train

    return ray.train.RunConfig(
        name=name,
        storage_path=str((data_dir / "train_runs").resolve()),
        failure_config=ray.train.FailureConfig(max_failures=cfg.distributed.max_failures),
        # Ray Train's own INFO lines (every report, every checkpoint) would drown rank 0's progress.
        logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # type: ignore[call-arg]
        # The best epoch by validation loss is kept (and published); the latest is kept for resuming.
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=2, checkpoint_score_attribute="valid/loss", checkpoint_score_order="min"
        ),
    )


def best_checkpoint(result: Any) -> Path:
    """The kept checkpoint with the lowest validation loss (the latest when none is scored)."""
    scored = [(m["valid/loss"], c) for c, m in (result.best_checkpoints or []) if "valid/loss" in m]
    return Path(min(scored, key=lambda x: x[0])[1].path if scored else result.checkpoint.path)
