"""The training loop that runs on every Ray Train worker."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.common.config import TrainConfig
from pipelines.common.tracking import MODEL_FILE
from pipelines.train.setup import TrainSetup, servable_ranker

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- the worker
def sharded_model(setup: TrainSetup, world: int, device: Any, sharding: str) -> tuple[Any, Any, Any]:
    """DistributedModelParallel over the train wrapper, its dense optimizer, and the combined (fused
    embedding + dense) optimizer that steps both."""
    import torch
    import torch.distributed as dist
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.types import ParameterConstraints
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    from models.ranker import MultiTaskRanker
    from models.train_wrapper import RankerTrainWrapper

    cfg = TrainConfig.model_validate(setup.config)
    model = MultiTaskRanker(setup.spec, device=torch.device("meta"))
    wrapper = RankerTrainWrapper(model, setup.loss)
    apply_optimizer_in_backward(
        RowWiseAdagrad, model.sparse_arch.parameters(), {"lr": cfg.optim.embedding_lr}
    )
    constraints = {t.name: ParameterConstraints(sharding_types=[sharding]) for t in setup.spec.tables()}
    topology = Topology(world_size=world, compute_device=device.type, local_world_size=world)
    planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
    plan = planner.collective_plan(wrapper, [EmbeddingBagCollectionSharder()], dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(module=wrapper, device=device, plan=plan)
    dmp.module.model.set_standardization(
        torch.tensor(setup.dense_mean, dtype=torch.float32, device=device),
        torch.tensor(setup.dense_std, dtype=torch.float32, device=device),
    )
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(dmp.named_parameters())),
        lambda params: torch.optim.Adam(params, lr=cfg.optim.dense_lr),
    )
    return dmp, dense, CombinedOptimizer([dmp.fused_optimizer, dense])


def gather_full_state(dmp: Any, rank: int) -> dict[str, Any] | None:
    """Every rank takes part; rank 0 gets the unsharded state dict of the servable ranker."""
    import torch
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    full: dict[str, Any] = {}
    for key, value in dmp.state_dict().items():
        if not key.startswith("model."):
            continue
        name = key.removeprefix("model.")
        if isinstance(value, ShardedTensor):
            out = torch.empty(value.size(), dtype=value.dtype) if rank == 0 else None
            value.gather(dst=0, out=out)
            full[name] = out
        else:
            full[name] = value.detach().cpu()
    return full if rank == 0 else None


class _Tracker:
    """Rank 0's MLflow client: logs progress into the driver's run (``{"uri", "run_id"}``), never fails
    training when the tracking store hiccups."""

    def __init__(self, tracking: dict[str, str] | None) -> None:
        self.run_id = tracking["run_id"] if tracking else None
        if tracking:
            from mlflow import MlflowClient

            self.client = MlflowClient(tracking["uri"])

    def __bool__(self) -> bool:
        return self.run_id is not None

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(f"train/{k}" if k.startswith("loss/") else k, float(v), now, step)
            for k, v in metrics.items()
            if k != "step"
        ]
        try:
            self.client.log_batch(str(self.run_id), metrics=batch)
        except Exception as e:
            log.warning("MLflow logging failed at step %d: %s", step, e)


def _inputs(b: Any, device: Any) -> tuple[Any, ...]:
    """A Batch as the train wrapper's arguments on ``device``."""
    labels = {k: v.to(device) for k, v in b.labels.items()}
    bias = None if b.bias is None else b.bias.to(device)
    return b.dense.to(device), b.sparse.to(device), labels, b.weights.to(device), bias


def train_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import torch
    import torch.distributed as dist

    from models.batch import collate
    from pipelines.common.runtime import setup_worker_logging

    setup_worker_logging()  # rank 0's progress lines reach the driver through Ray
    setup: TrainSetup = loop_config["setup"]
    cfg = TrainConfig.model_validate(setup.config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    use_gpu = torch.cuda.is_available() and bool(loop_config["use_gpu"])
    device = torch.device("cuda", ctx.get_local_rank()) if use_gpu else torch.device("cpu")
    sharding = cfg.distributed.sharding or ("row_wise" if use_gpu else "table_wise")
    torch.manual_seed(cfg.optim.seed)
    dmp, dense_optimizer, optimizer = sharded_model(setup, world, device, sharding)
    start_epoch, step, best = 0, 0, {"loss": float("inf"), "epoch": -1}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / f"rank-{rank}.pt", weights_only=False)
        dmp.load_state_dict(state["model"])
        dense_optimizer.init_state()  # Adam creates its state lazily; loading needs it in place
        dense_optimizer.load_state_dict(state["dense_optimizer"])
        dmp.fused_optimizer.load_state_dict(state["fused_optimizer"])
        start_epoch, step, best = state["epoch"] + 1, state["step"], state["best"]
    tracker = _Tracker(loop_config.get("tracking")) if rank == 0 else None
    rng = np.random.default_rng(cfg.optim.seed + 1000 * rank)
    train_shard = ray.train.get_dataset_shard("train")
    valid_shard = ray.train.get_dataset_shard("valid")
    t_report, n_report = time.perf_counter(), 0
    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, cfg.optim.epochs):
        dmp.train()
        batches = train_shard.iter_batches(
            batch_size=cfg.optim.batch_size,
            batch_format="numpy",
            drop_last=True,
            local_shuffle_buffer_size=cfg.optim.shuffle_buffer,
            local_shuffle_seed=cfg.optim.seed + epoch,
        )
        for i, cols in enumerate(batches):
            if cfg.optim.max_steps_per_epoch and i >= cfg.optim.max_steps_per_epoch:
                break
            b = collate(cols, setup.layout, setup.encoder, id_dropout=cfg.optim.id_dropout, rng=rng)
            loss, (losses, _) = dmp(*_inputs(b, device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            n_report += len(b)
            if step % cfg.optim.report_every == 0:
                elapsed = time.perf_counter() - t_report
                metrics = {k: float(v) for k, v in losses.items()}
                metrics.update(epoch=epoch, step=step, samples_per_s=n_report * world / max(elapsed, 1e-9))
                ray.train.report(metrics)
                if tracker:
                    tracker.log(metrics, step)
                    log.info(
                        "epoch %d step %d loss %.4f %.0f samples/s",
                        epoch,
                        step,
                        metrics["loss/total"],
                        metrics["samples_per_s"],
                    )
                t_report, n_report = time.perf_counter(), 0
        # Validation loss, summed over every rank's shard.
        dmp.eval()
        sums = torch.zeros(2, dtype=torch.float64)
        with torch.no_grad():
            for cols in valid_shard.iter_batches(
                batch_size=cfg.optim.batch_size, batch_format="numpy", drop_last=True
            ):
                b = collate(cols, setup.layout, setup.encoder)
                loss, _ = dmp(*_inputs(b, device))
                sums += torch.tensor([float(loss) * len(b), len(b)], dtype=torch.float64)
        dist.all_reduce(sums)
        metrics = {
            **metrics,
            "epoch": epoch,
            "step": step,
            "valid/loss": float(sums[0]) / max(float(sums[1]), 1.0),
        }
        if tracker:
            tracker.log({"valid/loss": metrics["valid/loss"]}, step)
        if metrics["valid/loss"] < best["loss"]:
            best = {"loss": metrics["valid/loss"], "epoch": epoch}
        # Same decision on every rank: the validation loss is all-reduced.
        stop = cfg.optim.patience is not None and epoch - best["epoch"] >= cfg.optim.patience
        full = gather_full_state(dmp, rank)  # every epoch's checkpoint is servable; the best one is published
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(
                {
                    "model": dmp.state_dict(),
                    "dense_optimizer": dense_optimizer.state_dict(),
                    "fused_optimizer": dmp.fused_optimizer.state_dict(),
                    "epoch": epoch,
                    "step": step,
                    "best": best,
                },
                Path(tmp) / f"rank-{rank}.pt",
            )
            if full is not None:
                servable_ranker(setup, full).save(Path(tmp) / MODEL_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        if stop:
            log.info("early stop after epoch %d: best validation loss at epoch %d", epoch, best["epoch"])
            break
