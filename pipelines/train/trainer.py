"""Ray Train, the driver's side: the TorchTrainer over Ray Data shards of the train and validation splits,
each worker running :func:`pipelines.train.loop.train_loop` on a trainable model (:func:`fit`): the
ranker (:class:`RankerTraining`, :func:`train`) or the two-tower retriever
(:mod:`pipelines.retrieval`)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.common.config import DistributedConfig, OptimConfig, TrainConfig
from pipelines.train.loop import TrainableModel, train_loop
from pipelines.train.setup import RankerTraining, build_setup

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- the driver
def run_name(experiment: str, data_dir: Path, resume: bool) -> str:
    """The Ray Train run name: ``<experiment>``, or ``<experiment>-YYYYmmdd-HHMMSS`` when that exists;
    with ``resume``, the experiment's most recently active run."""
    storage = (data_dir / "train_runs").resolve()
    if resume:
        pattern = re.compile(re.escape(experiment) + r"(-\d{8}-\d{6})?")
        runs = [p for p in storage.glob(f"{experiment}*") if p.is_dir() and pattern.fullmatch(p.name)]
        return max(runs, key=lambda p: p.stat().st_mtime).name if runs else experiment
    if (storage / experiment).exists():
        return f"{experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
    return experiment


def train(
    cfg: TrainConfig,
    data_dir: Path,
    resume: bool = False,
    name: str | None = None,
    tracking: dict[str, str] | None = None,
) -> Any:
    """Train the ranker (:func:`fit` on :class:`RankerTraining`); returns the Ray Train ``Result`` (its
    checkpoint holds ``model.pt``).

    ``tracking`` (``{"uri", "run_id"}``) makes rank 0 log progress into that MLflow run.
    """
    setup = build_setup(data_dir, cfg)
    name = name or run_name(cfg.experiment, data_dir, resume)
    return fit(RankerTraining(setup), setup.columns, cfg.optim, cfg.distributed, data_dir, name, tracking)


def fit(
    training: TrainableModel,
    columns: list[str],
    optim: OptimConfig,
    distributed: DistributedConfig,
    data_dir: Path,
    name: str,
    tracking: dict[str, str] | None = None,
) -> Any:
    """Run the TorchTrainer on any :class:`pipelines.train.loop.TrainableModel` over the feature splits'
    ``columns``; returns the Ray Train ``Result``."""
    from ray.train.torch import TorchTrainer

    data = datasets(optim, data_dir, columns, training.prepare_block)
    use_gpu = gpus_wanted(distributed)
    loop_config = {
        "model": training,
        "optim": optim,
        "sharding": distributed.sharding,
        "use_gpu": use_gpu,
        "tracking": tracking,
    }
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=scaling_config(distributed, use_gpu),
        run_config=run_config(distributed, data_dir, name),
        datasets=data,
    )
    result = trainer.fit()
    log.info("trained: %s", {k: v for k, v in (result.metrics or {}).items() if isinstance(v, int | float)})
    return result


def datasets(
    optim: OptimConfig, data_dir: Path, columns: list[str], prepare: Callable[[pa.Table], pa.Table]
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
        ds = ds.map_batches(
            prepare,
            batch_format="pyarrow",
            batch_size=None,
            num_cpus=0.25,
            compute=ray.data.TaskPoolStrategy(size=2),
        )
        splits[split] = ds.materialize() if optim.materialize else ds
    # Files are written day by day and viewer by viewer: mix the blocks, then shuffle within a buffer.
    splits["train"] = splits["train"].randomize_block_order(seed=optim.seed)
    return splits


def gpus_wanted(distributed: DistributedConfig) -> bool:
    """``distributed.use_gpu``, or when unset, whether the cluster has a GPU for every worker."""
    import ray

    if distributed.use_gpu is not None:
        return distributed.use_gpu
    return bool(ray.cluster_resources().get("GPU", 0) >= distributed.num_workers)


def scaling_config(distributed: DistributedConfig, use_gpu: bool) -> Any:
    """``num_workers`` workers, each with a GPU or ``cpus_per_worker`` CPUs."""
    import ray.train

    return ray.train.ScalingConfig(
        num_workers=distributed.num_workers,
        use_gpu=use_gpu,
        resources_per_worker=None if use_gpu else {"CPU": distributed.cpus_per_worker},
    )


def run_config(distributed: DistributedConfig, data_dir: Path, name: str) -> Any:
    """Run ``name`` under ``D/train_runs/``: failure recovery, quiet logs, the best and the latest
    checkpoints kept."""
    import ray.train

    return ray.train.RunConfig(
        name=name,
        storage_path=str((data_dir / "train_runs").resolve()),
        failure_config=ray.train.FailureConfig(max_failures=distributed.max_failures),
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
