"""Training figures: ``python -m bench.train_speed --data-dir data/demo`` (what ``make bench`` runs).

In one run, on the same features:

1. the real pipeline, ``pipelines.train.stage.run`` (train, evaluate, register) with configs/train.yaml
   (2 Ray Train workers, TorchRec table-wise sharding over gloo): its samples/s and the quality table of
   its evaluation;
2. the same Ray Train + TorchRec loop with 1 worker;
3. the same model in plain PyTorch (``bench.plain_ranker``: ``nn.EmbeddingBag``, replicated tables, DDP over
   gloo for 2 processes), same batches, collate, losses and optimizers (Adagrad on tables, Adam on the
   rest), 1 and 2 processes with as many torch threads per process as a Ray Train worker gets.

Throughput is the median of the per-interval samples/s (every ``report_every`` steps; the first interval
of each epoch, which waits for the data pipeline to start, is left out). Writes the "Training (issue 3)"
section of ``--out``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from bench.report import machine, write_section
from pipelines.common.config import TrainConfig, load_config

REPO = Path(__file__).resolve().parent.parent
SPEED_EPOCHS = 2
#: The training step's phases, as :class:`pipelines.train.loop.StepTimer` names them.
PHASES = ("data", "collate", "input_dist", "forward", "backward", "optimizer", "report")


def _median_rate(history: list[tuple[int, float, int]]) -> float:
    """``(step, samples_per_s, epoch)`` → median, leaving out each epoch's first interval."""
    seen: set[int] = set()
    rates = []
    for _, rate, epoch in sorted(history):
        if epoch in seen:
            rates.append(rate)
        seen.add(epoch)
    return statistics.median(rates) if rates else float("nan")


def ray_torchrec(cfg: TrainConfig, data_dir: Path, publish: bool) -> dict[str, Any]:
    """One run of the real Ray Train + TorchRec loop; ``publish`` runs the whole train_and_publish."""
    from mlflow import MlflowClient

    from pipelines.common import tracking
    from pipelines.train.stage import run as train_and_publish
    from pipelines.train.trainer import train

    start = time.perf_counter()
    evaluation = None
    if publish:
        published = train_and_publish(cfg, data_dir)
        run_id, evaluation = published.run_id, published.evaluation
        uri = tracking.tracking_uri(data_dir)
    else:
        uri = tracking.configure(data_dir)
        client = MlflowClient(uri)
        run_id = client.create_run(tracking.experiment_id(cfg.experiment, data_dir)).info.run_id
        train(cfg, data_dir, tracking={"uri": uri, "run_id": run_id})
        client.set_terminated(run_id)
    wall = time.perf_counter() - start
    client = MlflowClient(uri)
    rates = {m.step: m.value for m in client.get_metric_history(run_id, "samples_per_s")}
    epochs = {m.step: m.value for m in client.get_metric_history(run_id, "epoch")}
    history = [(s, r, int(epochs.get(s, 0))) for s, r in rates.items()]
    breakdown = {}
    for phase in PHASES:
        values = {m.step: m.value for m in client.get_metric_history(run_id, f"time/{phase}_ms")}
        if values:
            breakdown[phase] = _median_rate([(s, v, int(epochs.get(s, 0))) for s, v in values.items()])
    return {
        "samples_per_s": _median_rate(history),
        "wall_s": wall,
        "evaluation": evaluation,
        "breakdown": breakdown,
    }


# ------------------------------------------------------------------------------------- plain PyTorch
def _plain_worker(
    rank: int, world: int, port: int, data_dir: str, threads: int, out: str, config: dict[str, Any], gpu: bool
) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from bench.plain_ranker import PlainRanker
    from models.batch import Forget, Jagged, finish, prepare
    from models.train_wrapper import RankerTrainWrapper
    from pipelines.features.manifest import read_columns
    from pipelines.train.loop import StepTimer
    from pipelines.train.setup import build_setup

    torch.set_num_threads(threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl" if gpu else "gloo", rank=rank, world_size=world)
    device = torch.device("cuda", rank) if gpu else torch.device("cpu")
    cfg = TrainConfig.model_validate(config)
    setup = build_setup(Path(data_dir), cfg)
    torch.manual_seed(cfg.optim.seed)
    model = PlainRanker(setup.spec)
    model.dense_mean.copy_(torch.tensor(setup.dense_mean))
    model.dense_std.copy_(torch.tensor(setup.dense_std).clamp_min(1e-6))
    wrapper = RankerTrainWrapper(model, setup.loss).to(device)  # type: ignore[arg-type]
    ddp = DistributedDataParallel(wrapper, device_ids=[rank] if gpu else None) if world > 1 else wrapper
    tables = list(model.bags.parameters())
    table_ids = {id(p) for p in tables}
    rest = [p for p in wrapper.parameters() if id(p) not in table_ids]
    opt_tables = torch.optim.Adagrad(tables, lr=cfg.optim.embedding_lr)
    opt_rest = torch.optim.Adam(rest, lr=cfg.optim.dense_lr)
    cols = read_columns(Path(data_dir), "train")
    n = len(cols["impression_id"])
    # The same per-row work as the pipeline's Ray Data blocks, done once (the twin holds the split in memory).
    ready = prepare(cols, setup.layout, setup.encoder)
    forget = Forget.of(setup.layout, setup.cold_viewer, cfg.optim.history_dropout)
    mine = np.arange(rank, n - n % world, world)  # this process's shard, equal on every rank (DDP lockstep)
    rng = np.random.default_rng(cfg.optim.seed + rank)
    bs, every = cfg.optim.batch_size, cfg.optim.report_every
    history: list[tuple[int, float, int]] = []
    phases: dict[str, list[tuple[int, float, int]]] = {}
    timer, clock = StepTimer(), time.perf_counter
    step = 0
    for epoch in range(SPEED_EPOCHS):
        order = rng.permutation(mine)
        t0, seen = clock(), 0
        for lo in range(0, len(order) - bs + 1, bs):
            t = clock()
            idx = order[lo : lo + bs]
            batch_cols = {k: v.take(idx) if isinstance(v, Jagged) else v[idx] for k, v in ready.items()}
            timer.record("data", clock() - t)
            t = clock()
            b = finish(batch_cols, setup.layout, setup.encoder, cfg.optim.id_dropout, rng, forget).to(device)
            timer.record("collate", clock() - t)
            t = clock()
            loss, _ = ddp(b)
            timer.record("forward", clock() - t)
            t = clock()
            opt_tables.zero_grad()
            opt_rest.zero_grad()
            loss.backward()
            timer.record("backward", clock() - t)
            t = clock()
            opt_tables.step()
            opt_rest.step()
            timer.record("optimizer", clock() - t)
            step += 1
            timer.steps += 1
            seen += len(idx)
            if step % every == 0:
                history.append((step, seen * world / (clock() - t0), epoch))
                for key, ms in timer.take().items():
                    phases.setdefault(key.removeprefix("time/").removesuffix("_ms"), []).append(
                        (step, ms, epoch)
                    )
                t0, seen = clock(), 0
    if rank == 0:
        Path(out).write_text(json.dumps({"history": history, "phases": phases}))
    dist.destroy_process_group()


def plain_pytorch(
    data_dir: Path, world: int, threads: int, cfg: TrainConfig, gpu: bool = False
) -> dict[str, Any]:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "history"
        start = time.perf_counter()
        config = cfg.model_dump(mode="json")
        args = (world, port, str(data_dir), threads, str(out), config, gpu)
        mp.spawn(_plain_worker, args=args, nprocs=world, join=True)
        wall = time.perf_counter() - start
        result = json.loads(out.read_text())
    return {
        "samples_per_s": _median_rate([tuple(h) for h in result["history"]]),
        "wall_s": wall,
        "breakdown": {k: _median_rate([tuple(h) for h in v]) for k, v in result["phases"].items()},
    }


def _build_demo_data(work: Path) -> None:
    """synth → ingest → features on configs/data.yaml (the demo scale) into ``work``."""
    from pipelines.common.config import DataConfig
    from pipelines.features.stage import run as features
    from pipelines.ingest.stage import run as ingest
    from pipelines.synth.stage import run as synth

    data = load_config(REPO / "configs" / "data.yaml", DataConfig)
    synth(data.synth, work, progress=False)
    ingest(data.ingest, work)
    features(data.features, work)


def _ray_threads() -> int:
    """torch threads inside a Ray task that reserves what a Ray Train worker reserves."""
    import ray

    cfg = load_config(REPO / "configs" / "train.yaml", TrainConfig)

    @ray.remote(num_cpus=cfg.distributed.cpus_per_worker)
    def threads() -> int:
        import torch

        return int(torch.get_num_threads())

    return int(ray.get(threads.remote()))


def render(
    rows: list[dict[str, Any]],
    full: dict[str, Any],
    threads: int,
    rows_train: int,
    title: str = "Training (issue 3)",
    overrides: dict[str, Any] | None = None,
) -> str:
    by = {(r["impl"], r["workers"]): r for r in rows}
    changed = "".join(f" `{k}={v}`" for k, v in (overrides or {}).items())
    lines = [
        f"## {title}",
        "",
        f"Command: `make bench` (`python -m bench.train_speed`) — {dt.date.today().isoformat()},",
        f"{machine()}. Demo-scale features (`make demo`: {rows_train:,} train rows), configs/train.yaml"
        + (f" with{changed}." if changed else "."),
        f"Samples/s: median over {SPEED_EPOCHS} epochs of per-interval rates, each epoch's first interval",
        "left out; every row trains alone. Ray Train workers reserve 0.5 CPU each and run",
        f"{threads} torch thread(s); the plain-PyTorch processes were given the same ({threads}).",
        "",
        "| implementation | workers | samples/s | wall s (whole run) |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['impl']} | {r['workers']} | {r['samples_per_s']:,.0f} | {r['wall_s']:.1f} |")
    lines.append("")
    for w in (1, 2):
        a, b = by.get(("Ray Train + TorchRec", w)), by.get(("plain PyTorch nn.EmbeddingBag", w))
        if a and b:
            lines.append(
                f"- {w} worker(s): TorchRec / plain PyTorch = {a['samples_per_s'] / b['samples_per_s']:.2f}×."
            )
    a1, a2 = by.get(("Ray Train + TorchRec", 1)), by.get(("Ray Train + TorchRec", 2))
    if a1 and a2:
        ratio = a2["samples_per_s"] / a1["samples_per_s"]
        lines.append(f"- Ray Train + TorchRec, 2 workers / 1 worker = {ratio:.2f}×.")
    lines += ["", *breakdown_table(rows)]
    evaluation = full.get("evaluation")
    if evaluation is not None:
        lines += [
            "",
            "### Offline quality (test split)",
            "",
            f"The train stage as `make demo` runs it (2 workers, early stopping, then evaluation and "
            f"registration, the peers fitted beside training): {full['wall_s']:.0f} s in all; as published "
            f"to MLflow: test split `{evaluation.eval_set}`, "
            f"{evaluation.rows:,} impressions in {evaluation.requests:,} requests. AUC per task; NDCG@"
            f"{evaluation.ndcg_k} and MRR of the value-model order within each request.",
            "",
            evaluation.table(),
            "",
            gap_summary(evaluation),
        ]
    return "\n".join(lines) + "\n"


def breakdown_table(rows: list[dict[str, Any]]) -> list[str]:
    """Milliseconds per training step by phase (medians over report intervals), one column per run."""
    named = [r for r in rows if r.get("breakdown")]
    if not named:
        return []
    head = " | ".join(f"{'TorchRec' if 'TorchRec' in r['impl'] else 'plain'} ×{r['workers']}" for r in named)
    lines = [
        "### Where a step's time goes (ms per step, per worker)",
        "",
        "Wall-clock timers around each phase of every step (`pipelines.train.loop.StepTimer`), medians over",
        "report intervals. *data*: waiting for the batch (Ray Data iterator; plain: slicing in-memory",
        "columns); *collate*: numpy → dense tensor + KeyedJaggedTensor (history and id dropout included);",
        "*input dist*: TorchRec's all-to-all of the sparse features; *forward*: the rest of the forward and",
        "the losses; *backward*: with TorchRec the fused table optimizer steps inside it; *optimizer*: the",
        "dense Adam (plain: Adagrad on the tables too); *report*: progress handed to MLflow (a background",
        "thread writes it).",
        "",
        f"| phase | {head} |",
        "|---|" + "---:|" * len(named),
    ]
    for phase in PHASES:
        if any(phase in r["breakdown"] for r in named):
            cells = " | ".join(
                f"{r['breakdown'][phase]:.2f}" if phase in r["breakdown"] else "–" for r in named
            )
            lines.append(f"| {phase.replace('_', ' ')} | {cells} |")
    totals = " | ".join(f"**{sum(r['breakdown'].values()):.2f}**" for r in named)
    lines.append(f"| total | {totals} |")
    return lines


def gap_summary(evaluation: Any) -> str:
    """How the ranker compares with the best baseline and the oracle, per task."""
    from models.tasks import BINARY_TASKS

    m = evaluation.models
    base = [n for n in ("logistic", "popularity", "reverse_chron") if n in m]
    parts, beaten = [], 0
    for t in BINARY_TASKS:
        r = m["ranker"]["tasks"][t]["auc"]
        best = max(m[n]["tasks"][t]["auc"] for n in base)
        beaten += r > best
        gap = ""
        if "oracle" in m:
            o = m["oracle"]["tasks"][t]["auc"]
            gap = f", {100 * (r - 0.5) / max(o - 0.5, 1e-9):.0f}% of the oracle's lift over chance"
        parts.append(f"{t} {r:.3f} vs best baseline {best:.3f}{gap}")
    return f"Ranker beats every baseline on {beaten} of {len(BINARY_TASKS)} tasks: " + "; ".join(parts) + "."


def main(
    data_dir: Annotated[
        Path | None, typer.Option(help="Data directory with features/ (default: build demo-scale data).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Markdown file to write the section into.")] = Path(
        "bench/RESULTS.md"
    ),
    gpu: Annotated[
        bool,
        typer.Option(
            help="On a GPU machine: every GPU as a worker, row-wise sharding over nccl, and the plain twin "
            "on the same GPUs (train only, no evaluation; its own section)."
        ),
    ] = False,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="A configs/train.yaml override, KEY=YAML (both sides).")
    ] = None,
) -> None:
    """Measure training throughput (TorchRec vs plain PyTorch, 1 and 2 workers) and offline quality."""
    import shutil

    import ray
    import yaml

    from pipelines.common.runtime import ray_session, setup_logging
    from pipelines.features.manifest import load_manifest

    setup_logging()
    overrides = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in set_ or [])}
    cfg = load_config(
        REPO / "configs" / "train.yaml",
        TrainConfig,
        {"experiment": "bench", "optim.time_input_dist": True, **overrides},
    )
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # this run's own store, inside `work`
    rows: list[dict[str, Any]] = []
    full: dict[str, Any] = {"evaluation": None}
    try:
        if data_dir is not None:
            shutil.copytree(data_dir / "features", work / "features")
            if (data_dir / "truth").exists():
                shutil.copytree(data_dir / "truth", work / "truth")
        with ray_session():
            if data_dir is None:
                _build_demo_data(work)
            threads = _ray_threads()
            if gpu:
                import torch

                n_gpu = torch.cuda.device_count()
                if n_gpu == 0:
                    raise typer.BadParameter("--gpu: this machine has no CUDA device", param_hint="--gpu")
                on_gpu = cfg.model_copy(deep=True)
                on_gpu.distributed.use_gpu, on_gpu.distributed.num_workers = True, n_gpu
                on_gpu.distributed.sharding = "row_wise"
                on_gpu.optim.epochs, on_gpu.optim.patience = SPEED_EPOCHS, None
                rows.append(
                    {"impl": "Ray Train + TorchRec", "workers": n_gpu, **ray_torchrec(on_gpu, work, False)}
                )
                worker_counts = [n_gpu]
            else:
                # The train stage as `make demo` runs it (train, evaluate, register; the peers are fitted
                # beside training and take CPU from it): its wall time and the quality table.
                full = ray_torchrec(cfg, work, publish=True)
                # Throughput alone, 2 and 1 workers under the same conditions (nothing beside them).
                for workers in (2, 1):
                    alone = cfg.model_copy(deep=True)
                    alone.distributed.num_workers = workers
                    alone.optim.epochs, alone.optim.patience = SPEED_EPOCHS, None
                    measured = ray_torchrec(alone, work, publish=False)
                    rows.append({"impl": "Ray Train + TorchRec", "workers": workers, **measured})
                worker_counts = [1, 2]
            ray.shutdown()
        for w in worker_counts:
            plain = plain_pytorch(work, w, threads, cfg, gpu)
            rows.append({"impl": "plain PyTorch nn.EmbeddingBag", "workers": w, **plain})
        rows_train = int(load_manifest(work)["splits"]["train"]["rows"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    title = "Training on GPU (issue 14)" if gpu else "Training (issue 3)"
    section = render(rows, full, threads, rows_train, title, overrides)
    write_section(out, section)
    print(section)


if __name__ == "__main__":
    typer.run(main)
