"""The training loop that runs on every Ray Train worker, as named steps (the shape of Ray's
``release/train_tests/benchmark/runner.py``)::

    TrainLoop.run():  setup → restore → for each epoch: train_epoch → validate → checkpoint
                                                        (early stopping on the validation loss)

The loop knows nothing of the ranker. A :class:`TrainableModel` (the ranker's is
:class:`pipelines.train.setup.RankerTraining`) says how to build the sharded model and its optimizers, how
to turn Ray Data's batches (as numpy columns) into the batch the model takes, and what servable model to
export from the gathered state at each checkpoint.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pipelines.common.config import OptimConfig
from pipelines.common.tracking import MODEL_FILE
from pipelines.features.manifest import arrow_columns
from pipelines.train.sharding import Sharded, gather_full_state, time_input_dist

if TYPE_CHECKING:
    import pyarrow as pa
    import torch

log = logging.getLogger(__name__)


class StepBatch(Protocol):
    """What the loop needs of a batch (:class:`models.batch.Batch` is one)."""

    def __len__(self) -> int: ...

    def to(self, device: torch.device, non_blocking: bool = False) -> StepBatch: ...


class Servable(Protocol):
    """The model that leaves training (:class:`models.servable.ServableRanker` is one)."""

    def save(self, path: Any) -> None: ...


class TrainableModel(Protocol):
    """The model-specific side of :class:`TrainLoop` (small and picklable: it travels to every worker).

    ``prepare_block`` turns a Ray Data block of feature columns into model-ready columns once (the datasets
    map it); ``train_batch`` and ``eval_batch`` make a step's batch of those. ``shard(...).dmp`` is called
    as ``dmp(batch) -> (loss, (losses, outputs))`` with ``losses`` a dict of detached scalars that has
    ``loss/total``; its servable module is its ``model`` submodule.
    """

    def shard(self, world: int, device: torch.device, sharding: str) -> Sharded: ...

    def prepare_block(self, table: pa.Table) -> pa.Table: ...

    def train_batch(self, columns: dict[str, Any], rng: np.random.Generator) -> StepBatch: ...

    def eval_batch(self, columns: dict[str, Any]) -> StepBatch: ...

    def export(self, state_dict: dict[str, Any]) -> Servable: ...


class StepTimer:
    """Wall-clock seconds per phase of the training step, summed since the last :meth:`take`.

    Phases: ``data`` (waiting for the next batch from Ray Data), ``collate`` (columns → model batch),
    ``forward`` (loss included; with TorchRec, the output all-to-all too), ``input_dist`` (TorchRec's
    input all-to-all, split out of forward when :func:`pipelines.train.sharding.time_input_dist` is on:
    ``forward`` is then what remains), ``backward`` (TorchRec steps the tables' fused optimizer inside
    it), ``optimizer`` (the dense optimizer) and ``report``.

    >>> t = StepTimer()
    >>> t.record("data", 0.002); t.record("data", 0.004); t.steps += 2
    >>> t.take()
    {'time/data_ms': 3.0}
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.steps = 0

    def record(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def reset(self) -> None:
        """Forget what was recorded (in place: instrumented modules hold :meth:`record`)."""
        self.seconds.clear()
        self.steps = 0

    def take(self) -> dict[str, float]:
        """Milliseconds per step of each phase since the last call (``time/<phase>_ms``); resets."""
        steps = max(self.steps, 1)
        if "input_dist" in self.seconds and "forward" in self.seconds:  # timed inside the forward
            self.seconds["forward"] -= self.seconds["input_dist"]
        out = {f"time/{k}_ms": round(1000 * v / steps, 4) for k, v in self.seconds.items()}
        self.reset()
        return out


class _Tracker:
    """Rank 0's MLflow client: logs progress into the driver's run (``{"uri", "run_id"}``) from a background
    thread, so a step never waits for the tracking store (measured: a synchronous report every 20 steps
    took two thirds of the training time), and never fails training when the store hiccups."""

    def __init__(self, tracking: dict[str, str] | None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.run_id = tracking["run_id"] if tracking else None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-progress")
        if tracking:
            from mlflow import MlflowClient

            self.client = MlflowClient(tracking["uri"])

    def __bool__(self) -> bool:
        return self.run_id is not None

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Queue ``metrics`` at ``step`` (in order; :meth:`flush` waits for them)."""
        self.pool.submit(self._log, dict(metrics), step, int(time.time() * 1000))

    def flush(self) -> None:
        self.pool.submit(lambda: None).result()

    def _log(self, metrics: dict[str, float], step: int, now: int) -> None:
        from mlflow.entities import Metric

        batch = [
            Metric(f"train/{k}" if k.startswith("loss/") else k, float(v), now, step)
            for k, v in metrics.items()
            if k != "step"
        ]
        try:
            self.client.log_batch(str(self.run_id), metrics=batch)
        except Exception as e:
            log.warning("MLflow logging failed at step %d: %s", step, e)


class TrainLoop:
    """One worker's training: every rank runs the same steps in lockstep (collectives inside).

    Args:
        model: the model-specific side (:class:`TrainableModel`).
        optim: epochs, batching, seed, patience and reporting cadence.
        sharding: TorchRec sharding type of every table; None: ``row_wise`` on GPU, ``table_wise`` on CPU.
        use_gpu: train on this worker's GPU when it has one.
        tracking: ``{"uri", "run_id"}``: rank 0 logs progress into that MLflow run.
    """

    def __init__(
        self,
        model: TrainableModel,
        optim: OptimConfig,
        sharding: str | None = None,
        use_gpu: bool = False,
        tracking: dict[str, str] | None = None,
    ) -> None:
        self.model, self.optim = model, optim
        self.sharding, self.use_gpu, self.tracking = sharding, use_gpu, tracking
        # Progress: what a checkpoint saves and restore() puts back.
        self.start_epoch, self.step = 0, 0
        self.best: dict[str, float] = {"loss": float("inf"), "epoch": -1}
        # The latest reported metrics (training losses, then the epoch's validation loss).
        self.metrics: dict[str, float] = {}
        # Samples since the last progress report, and when it was; where the steps' time went.
        self._t_report, self._n_report = time.perf_counter(), 0
        self.timer = StepTimer()

    def run(self) -> None:
        """Train from the start (or the restored epoch) to the last epoch or an early stop."""
        self.setup()
        self.restore()
        self._t_report, self._n_report = time.perf_counter(), 0
        for epoch in range(self.start_epoch, self.optim.epochs):
            self.train_epoch(epoch)
            stop = self.early_stop(epoch, self.validate(epoch))
            self.checkpoint(epoch)
            if stop:
                log.info(
                    "early stop after epoch %d: best validation loss at epoch %d", epoch, self.best["epoch"]
                )
                break

    def setup(self) -> None:
        """Rank and device; the seeded, sharded model and its optimizers; rank 0's tracker; data shards."""
        import ray.train
        import torch

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        use_gpu = torch.cuda.is_available() and bool(self.use_gpu)
        self.device = torch.device("cuda", ctx.get_local_rank()) if use_gpu else torch.device("cpu")
        torch.manual_seed(self.optim.seed)
        sharding = self.sharding or ("row_wise" if use_gpu else "table_wise")
        self.dmp, self.dense_optimizer, self.optimizer = self.model.shard(self.world, self.device, sharding)
        if self.optim.time_input_dist:
            time_input_dist(self.dmp, self.timer.record)
        self.tracker = _Tracker(self.tracking) if self.rank == 0 else None
        self.rng = np.random.default_rng(self.optim.seed + 1000 * self.rank)
        self.train_shard = ray.train.get_dataset_shard("train")
        self.valid_shard = ray.train.get_dataset_shard("valid")

    def restore(self) -> None:
        """Continue from Ray Train's checkpoint when there is one (``--resume``, or a restarted worker group):
        this rank's shards, both optimizers' states and the progress."""
        import ray.train
        import torch

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / f"rank-{self.rank}.pt", weights_only=False)
        self.dmp.load_state_dict(state["model"])
        self.dense_optimizer.init_state()  # Adam creates its state lazily; loading needs it in place
        self.dense_optimizer.load_state_dict(state["dense_optimizer"])
        self.dmp.fused_optimizer.load_state_dict(state["fused_optimizer"])
        self.start_epoch, self.step, self.best = state["epoch"] + 1, state["step"], state["best"]

    def train_epoch(self, epoch: int) -> None:
        """One pass over this rank's shard (locally shuffled), reporting every ``report_every`` steps."""
        import torch

        self.dmp.train()
        batches = self.train_shard.iter_batches(
            batch_size=self.optim.batch_size,
            batch_format="pyarrow",  # numpy would make every list and vector a per-row object
            drop_last=True,
            local_shuffle_buffer_size=self.optim.shuffle_buffer,
            local_shuffle_seed=self.optim.seed + epoch,
        )
        self.timer.reset()  # validation's forwards (timed input dist included) are not training steps
        record = self.timer.record
        # On a GPU the phases are asynchronous launches: the breakdown waits for each to finish.
        sync = torch.cuda.synchronize if self.device.type == "cuda" and self.optim.time_input_dist else None
        t = time.perf_counter()
        for i, table in enumerate(batches):
            if self.optim.max_steps_per_epoch and i >= self.optim.max_steps_per_epoch:
                break
            t = _lap(record, "data", t, sync)
            batch = self.model.train_batch(arrow_columns(table, jagged=True), self.rng).to(self.device)
            t = _lap(record, "collate", t, sync)
            loss, (losses, _) = self.dmp(batch)
            t = _lap(record, "forward", t, sync)
            self.optimizer.zero_grad()
            loss.backward()
            t = _lap(record, "backward", t, sync)
            self.optimizer.step()
            t = _lap(record, "optimizer", t, sync)
            self.step += 1
            self.timer.steps += 1
            self._n_report += len(batch)
            if self.step % self.optim.report_every == 0:
                self._report_progress(epoch, losses)
                t = _lap(record, "report", t, sync)

    def _report_progress(self, epoch: int, losses: dict[str, Any]) -> None:
        """The last step's losses, the samples/s since the last report (its own cost included: the clock
        restarts before it) and where the steps' time went: from rank 0 to MLflow and the log. Ray Train
        gets the metrics with each epoch's checkpoint, not here: a report is a round trip to its
        controller."""
        now = time.perf_counter()
        elapsed, samples = now - self._t_report, self._n_report
        self._t_report, self._n_report = now, 0
        self.metrics = {k: float(v) for k, v in losses.items()}
        self.metrics.update(
            epoch=epoch, step=self.step, samples_per_s=samples * self.world / max(elapsed, 1e-9)
        )
        self.metrics.update(self.timer.take())
        if self.tracker:
            self.tracker.log(self.metrics, self.step)
            log.info(
                "epoch %d step %d loss %.4f %.0f samples/s",
                epoch,
                self.step,
                self.metrics["loss/total"],
                self.metrics["samples_per_s"],
            )

    def validate(self, epoch: int) -> float:
        """The validation loss, summed over every rank's shard: every rank gets the same number."""
        import torch
        import torch.distributed as dist

        self.dmp.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # nccl reduces device tensors only
        with torch.no_grad():
            for table in self.valid_shard.iter_batches(
                batch_size=self.optim.batch_size, batch_format="pyarrow", drop_last=True
            ):
                batch = self.model.eval_batch(arrow_columns(table, jagged=True))
                loss, _ = self.dmp(batch.to(self.device))
                sums += torch.tensor(
                    [float(loss) * len(batch), len(batch)], dtype=torch.float64, device=self.device
                )
        dist.all_reduce(sums)
        valid_loss = float(sums[0]) / max(float(sums[1]), 1.0)
        self.metrics = {**self.metrics, "epoch": epoch, "step": self.step, "valid/loss": valid_loss}
        if self.tracker:
            self.tracker.log({"valid/loss": valid_loss}, self.step)
        return valid_loss

    def early_stop(self, epoch: int, valid_loss: float) -> bool:
        """Keep the best epoch; True once ``patience`` epochs went by without a better validation loss (the
        same decision on every rank: the loss is all-reduced)."""
        if valid_loss < self.best["loss"]:
            self.best = {"loss": valid_loss, "epoch": epoch}
        patience = self.optim.patience
        return patience is not None and epoch - self.best["epoch"] >= patience

    def checkpoint(self, epoch: int) -> None:
        """Every rank saves its shards, optimizer states and the progress; rank 0 adds the servable model
        gathered from all shards (every epoch's checkpoint is servable; the best one is published). Reported
        to Ray Train with the metrics."""
        import ray.train
        import torch

        full = gather_full_state(self.dmp, self.rank)  # a collective: every rank takes part
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(
                {
                    "model": self.dmp.state_dict(),
                    "dense_optimizer": self.dense_optimizer.state_dict(),
                    "fused_optimizer": self.dmp.fused_optimizer.state_dict(),
                    "epoch": epoch,
                    "step": self.step,
                    "best": self.best,
                },
                Path(tmp) / f"rank-{self.rank}.pt",
            )
            if full is not None:
                self.model.export(full).save(Path(tmp) / MODEL_FILE)
            if self.tracker:  # the epoch's progress is in MLflow before the driver sees the checkpoint
                self.tracker.flush()
            ray.train.report(self.metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _lap(record: Any, phase: str, since: float, sync: Any = None) -> float:
    """Record the seconds since ``since`` as ``phase`` (after ``sync()``, when given); returns now."""
    if sync is not None:
        sync()
    now = time.perf_counter()
    record(phase, now - since)
    return now


def train_loop(loop_config: dict[str, Any]) -> None:
    """The Ray Train worker function: ``loop_config`` holds :class:`TrainLoop`'s arguments."""
    from pipelines.common.runtime import setup_worker_logging

    setup_worker_logging()  # rank 0's progress lines reach the driver through Ray
    TrainLoop(**loop_config).run()
