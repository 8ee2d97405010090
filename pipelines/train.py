"""Distributed training: ``python -m pipelines.train --config configs/train.yaml --data-dir D``.

::

    D/features/train ──► Ray Data ──► streaming split, one shard per worker
                                        │  collate() → dense tensor + KeyedJaggedTensor
    Ray Train TorchTrainer (N workers)  ▼
        TorchRec DistributedModelParallel(RankerTrainWrapper(MultiTaskRanker))
          embedding tables sharded by the planner (table/column-wise on CPU+gloo, row-wise on GPU+nccl)
          fused row-wise Adagrad on the tables, Adam on the dense layers
        every epoch: validation loss, a checkpoint (each rank its own shards) → resume / failure recovery
        at the end: shards gathered on rank 0 → an unsharded servable model in the last checkpoint

Runs unchanged under ``ray job submit --working-dir . -- python -m pipelines.train ...`` or with a local
Ray when no ``RAY_ADDRESS`` is set. torchrec is imported lazily inside the workers.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pyarrow.dataset as pads
import typer

from models.batch import FeatureLayout, SparseEncoder
from models.ranker import RankerSpec
from models.servable import ServableRanker
from models.train_wrapper import LossConfig
from pipelines.cli import DataError, exit_on_error
from pipelines.config import TrainConfig, dump_config, load_config
from pipelines.features import load_manifest

log = logging.getLogger(__name__)

ID_FEATURES = ("sp_viewer", "sp_author", "sp_post")
MODEL_FILE = "model.pt"


@dataclass
class TrainSetup:
    """Everything a worker needs besides its data shard (small; shipped in the train-loop config)."""

    spec: RankerSpec
    layout: FeatureLayout
    encoder: SparseEncoder
    loss: LossConfig
    dense_mean: list[float]
    dense_std: list[float]
    config: dict[str, Any]


def build_setup(data_dir: Path, cfg: TrainConfig) -> TrainSetup:
    """Model shapes, input layout and id vocabularies from ``features/`` (train split only)."""
    manifest = load_manifest(data_dir)
    cols = manifest["columns"]
    stats = json.loads((data_dir / "features" / "stats.json").read_text())
    bias = tuple(manifest.get("bias_features", ()))
    sparse = (*cols["sparse_ids"], *cols["sparse_vocab"], *cols["sparse_lists"])
    if unknown := sorted(set(cfg.model.exclude_sparse) - set(sparse)):
        raise DataError(f"model.exclude_sparse: {unknown} are not sparse features of {data_dir / 'features'}")
    layout = FeatureLayout(
        dense=tuple(c for c in cols["dense"] if c not in bias),
        vectors=dict(cols["vectors"]),
        sparse=tuple(c for c in sparse if c not in cfg.model.exclude_sparse),
        bias=bias,
    )
    files = sorted(str(p) for p in (data_dir / "features" / "train").rglob("*.parquet"))
    if not files:
        raise DataError(f"{data_dir / 'features' / 'train'}: no training examples (run pipelines.features)")
    ids_table = pads.dataset(files, format="parquet").to_table(columns=list(ID_FEATURES))
    ids: dict[str, np.ndarray] = {}
    for name in (f for f in ID_FEATURES if f in layout.sparse):
        values, counts = np.unique(ids_table[name].to_numpy(), return_counts=True)
        ids[name] = values[counts >= cfg.model.min_id_count].astype(np.int64)
    codes = {**cols["sparse_vocab"], **cols["sparse_lists"]}
    encoder = SparseEncoder(ids=ids, codes={k: int(v) for k, v in codes.items()})
    m = cfg.model
    spec = RankerSpec(
        sparse=encoder.table_rows(),
        n_dense=layout.n_dense,
        embedding_dim=m.embedding_dim,
        bottom_mlp=tuple(m.bottom_mlp),
        top_mlp=tuple(m.top_mlp),
        interaction=m.interaction,
        dcn_layers=m.dcn_layers,
        dcn_rank=m.dcn_rank,
        n_bias=len(layout.bias),
    )
    mean = [stats[c]["mean"] for c in layout.dense] + [0.0] * sum(layout.vectors.values())
    std = [stats[c]["std"] for c in layout.dense] + [1.0] * sum(layout.vectors.values())
    loss = LossConfig(
        task_weights=dict(cfg.loss.task_weights),
        pos_weight=dict(cfg.loss.pos_weight),
        learned_weights=cfg.loss.learned_weights,
        huber_delta=cfg.loss.huber_delta,
    )
    return TrainSetup(spec, layout, encoder, loss, mean, std, cfg.model_dump(mode="json"))


# --------------------------------------------------------------------------------------------- the worker
def _sharded_model(setup: TrainSetup, world: int, device: Any, sharding: str) -> tuple[Any, Any, Any]:
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


def _gather_full_state(dmp: Any, rank: int) -> dict[str, Any] | None:
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
    from pipelines.runtime import setup_worker_logging

    setup_worker_logging()  # rank 0's progress lines reach the driver through Ray
    setup: TrainSetup = loop_config["setup"]
    cfg = TrainConfig.model_validate(setup.config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    use_gpu = torch.cuda.is_available() and bool(loop_config["use_gpu"])
    device = torch.device("cuda", ctx.get_local_rank()) if use_gpu else torch.device("cpu")
    sharding = cfg.distributed.sharding or ("row_wise" if use_gpu else "table_wise")
    torch.manual_seed(cfg.optim.seed)
    dmp, dense_optimizer, optimizer = _sharded_model(setup, world, device, sharding)
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
        full = _gather_full_state(
            dmp, rank
        )  # every epoch's checkpoint is servable; the best one is published
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
                _servable(setup, full).save(Path(tmp) / MODEL_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        if stop:
            log.info("early stop after epoch %d: best validation loss at epoch %d", epoch, best["epoch"])
            break


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


def _servable(setup: TrainSetup, state_dict: dict[str, Any]) -> ServableRanker:
    from models.ranker import MultiTaskRanker

    model = MultiTaskRanker(setup.spec)
    model.load_state_dict(state_dict)
    return ServableRanker(model, setup.layout, setup.encoder)


def load_trained(checkpoint_dir: Path) -> ServableRanker:
    """The unsharded servable ranker from a final checkpoint folder."""
    return ServableRanker.load(checkpoint_dir / MODEL_FILE)


@dataclass
class Published:
    """What a finished training run left behind: its MLflow run, registered version and evaluation."""

    run_id: str
    model_name: str
    version: str
    checkpoint: Path
    evaluation: Any  # pipelines.evaluate.Evaluation


def train_and_publish(cfg: TrainConfig, data_dir: Path, resume: bool = False) -> Published:
    """Train (rank 0 logging into an MLflow run), evaluate on the test split against the baselines, log
    config, metrics, plots and the servable model, register a new ``feed-ranker`` version and point alias
    ``challenger`` at it. ``resume`` continues the last run, its checkpoint and its MLflow run."""
    import mlflow
    from mlflow import MlflowClient

    from pipelines import tracking
    from pipelines.evaluate import RANKER, evaluate, read_columns

    uri = tracking.configure(data_dir)
    exp = tracking.experiment_id(cfg.experiment, data_dir)
    name = run_name(cfg, data_dir, resume)
    run_file = data_dir / "train_runs" / name / "mlflow_run_id"
    previous = run_file.read_text().strip() if resume and run_file.exists() else None
    with mlflow.start_run(run_id=previous, experiment_id=None if previous else exp, run_name=name) as run:
        run_id = run.info.run_id
        run_file.parent.mkdir(parents=True, exist_ok=True)
        run_file.write_text(run_id)
        if previous is None:
            mlflow.log_params(tracking.flat_params(cfg.model_dump(mode="json")))
            mlflow.log_dict(cfg.model_dump(mode="json"), "config/train.yaml")
            mlflow.log_artifact(str(data_dir / "features" / "manifest.json"), "data")
            mlflow.set_tags({"data_dir": str(data_dir.resolve()), "ray_train_run": name})
        result = train(cfg, data_dir, resume=resume, name=name, tracking={"uri": uri, "run_id": run_id})
        checkpoint = best_checkpoint(result)
        mlflow.set_tag("checkpoint", str(checkpoint))
        ranker = load_trained(checkpoint)
        out = data_dir / "evaluation" / name
        evaluation = evaluate(data_dir, {RANKER: ranker}, cfg.evaluate, out_dir=out)
        _loss_plot(MlflowClient(), run_id, out / "losses.png")
        mlflow.log_artifacts(str(out), "evaluation")
        mlflow.log_metrics(evaluation.flat(RANKER))
        for baseline in evaluation.models:
            if baseline != RANKER:
                mlflow.log_metrics(
                    {f"baseline/{baseline}/{k[5:]}": v for k, v in evaluation.flat(baseline).items()}
                )
        mlflow.set_tag("eval_set", evaluation.eval_set)
        version = tracking.log_ranker(ranker, read_columns(data_dir, "test"), cfg.registry.model_name)
        client = MlflowClient()
        client.set_registered_model_alias(cfg.registry.model_name, tracking.CHALLENGER, version.version)
        client.set_model_version_tag(
            cfg.registry.model_name, version.version, "eval_set", evaluation.eval_set
        )
        for k in (f"ndcg_at_{cfg.evaluate.ndcg_k}", "mrr", "mean_auc"):
            if f"test/{k}" in evaluation.flat(RANKER):
                client.set_model_version_tag(
                    cfg.registry.model_name, version.version, k, f"{evaluation.flat(RANKER)[f'test/{k}']:.4f}"
                )
    log.info(
        "registered %s version %s (alias %s)", cfg.registry.model_name, version.version, tracking.CHALLENGER
    )
    return Published(run_id, cfg.registry.model_name, str(version.version), checkpoint, evaluation)


def _loss_plot(client: Any, run_id: str, path: Path) -> None:
    """Training and validation loss curves from the run's metric history."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [
        k for k in client.get_run(run_id).data.metrics if k.startswith("train/loss/") or k == "valid/loss"
    ]
    fig, ax = plt.subplots(figsize=(8, 5))
    for key in sorted(keys):
        hist = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        style = "o-" if key == "valid/loss" else "-"
        ax.plot(
            [m.step for m in hist], [m.value for m in hist], style, label=key, lw=2 if "total" in key else 1
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


app = typer.Typer(add_completion=False, help=__doc__.split("\n")[0])


@app.command()
def main(
    data_dir: Annotated[Path, typer.Option(help="Data directory holding features/.")],
    config: Annotated[Path | None, typer.Option(help="YAML config (configs/train.yaml).")] = Path(
        "configs/train.yaml"
    ),
    resume: Annotated[
        bool, typer.Option(help="Continue the experiment's last run from its checkpoint.")
    ] = False,
) -> None:
    """Train the multitask ranker with Ray Train + TorchRec."""
    from pipelines.runtime import ray_session, setup_logging

    setup_logging()
    with exit_on_error():
        cfg = load_config(config, TrainConfig)
        log.info("resolved config:\n%s", dump_config(cfg))
        load_manifest(data_dir)
        with ray_session():
            published = train_and_publish(cfg, data_dir, resume=resume)
        ev = published.evaluation
        typer.echo(f"test split {ev.eval_set}: {ev.rows} impressions, {ev.requests} requests")
        typer.echo(ev.table())
        typer.echo(
            f"registered {published.model_name} version {published.version} (alias challenger); "
            f"MLflow run {published.run_id}; checkpoint {published.checkpoint}"
        )


if __name__ == "__main__":
    # Run through the package so pickled classes (TrainSetup) name `pipelines.train`, not `__main__`.
    from pipelines.train import app as package_app

    package_app()
