"""Fast ablations of the ranker: ``python -m bench.ablate --data-dir D --seed 1 [--set k=v] [--drop col]``.

The pipeline's model, batches, dropout, losses and optimizers (:func:`pipelines.train.setup.build_setup`,
:class:`pipelines.train.setup.RankerTraining`'s ``train_batch``, fused-style row-wise Adagrad on the tables
and Adam on the rest, heads at the base rates, early stopping on the validation loss), trained in this one
process without Ray or sharding: ~20 s per epoch at demo scale instead of a pipeline run's minutes, so one
change can be tried over seeds quickly. The figures that count come from the real pipeline
(``bench.quality``); this is for finding what to try there. Prints one JSON line: validation loss per
epoch, test AUC per task (at the top slot, as served; split into new and known viewers when the test
split has new ones), RCE per task (at the logged position), and the median ms of one 1,000-candidate
``predict`` (collate + forward, one thread).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from pipelines.common.config import TrainConfig, load_config
from pipelines.common.runtime import REPO


def _without(setup: Any, drop: list[str], stats: dict[str, Any], cfg: TrainConfig) -> Any:
    """``setup`` with the dense columns ``drop`` left out of the model's inputs."""
    lay = dataclasses.replace(setup.layout, dense=tuple(c for c in setup.layout.dense if c not in drop))
    spec = cfg.model.to_spec(setup.encoder.table_rows(), lay.n_dense, len(lay.bias))
    pad = sum(lay.vectors.values())
    mean = [stats[c]["mean"] for c in lay.dense] + [0.0] * pad
    std = [stats[c]["std"] for c in lay.dense] + [1.0] * pad
    cold = {k: v for k, v in setup.cold_viewer.items() if k not in drop}
    return dataclasses.replace(setup, layout=lay, spec=spec, dense_mean=mean, dense_std=std, cold_viewer=cold)


def run(data_dir: Path, seed: int, overrides: dict[str, Any], drop: list[str]) -> dict[str, Any]:
    import torch
    from sklearn.metrics import log_loss, roc_auc_score
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    from models.batch import collate
    from models.ranker import MultiTaskRanker
    from models.servable import ServableRanker
    from models.tasks import BINARY_TASKS
    from models.train_wrapper import RankerTrainWrapper
    from pipelines.features.manifest import read_columns
    from pipelines.train.setup import RankerTraining, build_setup

    cfg = load_config(REPO / "configs" / "train.yaml", TrainConfig, {**overrides, "optim.seed": seed})
    torch.set_num_threads(1)
    setup = build_setup(data_dir, cfg)
    if drop:
        stats = json.loads((data_dir / "features" / "stats.json").read_text())
        setup = _without(setup, drop, stats, cfg)
    torch.manual_seed(seed)
    model = MultiTaskRanker(setup.spec)
    model.set_standardization(torch.tensor(setup.dense_mean), torch.tensor(setup.dense_std))
    model.init_heads(setup.base_rates)
    wrapper = RankerTrainWrapper(model, setup.loss)
    tables = list(model.sparse_arch.parameters())
    table_ids = {id(p) for p in tables}
    opt_tables = RowWiseAdagrad(tables, lr=cfg.optim.embedding_lr)
    opt_rest = torch.optim.Adam(
        [p for p in wrapper.parameters() if id(p) not in table_ids], lr=cfg.optim.dense_lr
    )
    training = RankerTraining(setup)
    train, valid = (
        read_columns(data_dir, "train", setup.columns),
        read_columns(data_dir, "valid", setup.columns),
    )
    test = read_columns(data_dir, "test")
    rng = np.random.default_rng(seed + 1)
    bs, n = cfg.optim.batch_size, len(train[BINARY_TASKS[0]])

    def batches(cols: dict[str, np.ndarray], order: np.ndarray, size: int) -> Any:
        for lo in range(0, len(order) - size + 1, size):
            yield {k: v[order[lo : lo + size]] for k, v in cols.items()}

    best, best_state, history = float("inf"), None, []
    for epoch in range(cfg.optim.epochs):
        start = time.perf_counter()
        wrapper.train()
        for cols in batches(train, rng.permutation(n), bs):
            loss, _ = wrapper(training.train_batch(cols, rng))
            opt_tables.zero_grad()
            opt_rest.zero_grad()
            loss.backward()
            opt_tables.step()
            opt_rest.step()
        wrapper.eval()
        total = np.zeros(2)
        with torch.no_grad():
            for cols in batches(valid, np.arange(len(valid[BINARY_TASKS[0]])), 4096):
                b = collate(cols, setup.layout, setup.encoder)
                total += [float(wrapper(b)[0]) * len(b), len(b)]
        history.append(round(total[0] / total[1], 5))
        typer.echo(f"epoch {epoch}: valid loss {history[-1]} ({time.perf_counter() - start:.0f} s)", err=True)
        if history[-1] < best:
            best, best_state = history[-1], {k: v.clone() for k, v in model.state_dict().items()}
        elif cfg.optim.patience is not None and epoch - int(np.argmin(history)) >= cfg.optim.patience:
            break
    assert best_state is not None
    model.load_state_dict(best_state)
    ranker = ServableRanker(model, setup.layout, setup.encoder)

    def predict(logged: bool) -> dict[str, np.ndarray]:
        names = [*ranker.input_columns, *(ranker.layout.bias if logged else ())]
        parts = [
            ranker.predict({c: test[c][lo : lo + 8192] for c in names}, at_logged_position=logged)
            for lo in range(0, len(test["click"]), 8192)
        ]
        return {t: np.concatenate([p[t] for p in parts]) for t in BINARY_TASKS}

    served, logged = predict(False), predict(True)
    # What one feed's ranking costs: predict (collate + forward) on 1,000 rows, one thread, median of 20.
    one_feed = {c: test[c][:1000] for c in ranker.input_columns}
    ranker.predict(one_feed)
    times = []
    for _ in range(20):
        start = time.perf_counter()
        ranker.predict(one_feed)
        times.append(time.perf_counter() - start)
    known = np.isin(test["viewer_id"], read_columns(data_dir, "train", ["viewer_id"])["viewer_id"])
    out: dict[str, Any] = {"seed": seed, "valid_loss": history, "best_epoch": int(np.argmin(history))}
    out["predict_ms_1000"] = round(1000 * float(np.median(times)), 2)
    for t in BINARY_TASKS:
        y = test[t].astype(int)
        out[f"{t}_auc"] = round(float(roc_auc_score(y, served[t])), 4)
        if 0.01 < known.mean() < 0.99:
            out[f"{t}_auc_new"] = round(float(roc_auc_score(y[~known], served[t][~known])), 4)
            out[f"{t}_auc_known"] = round(float(roc_auc_score(y[known], served[t][known])), 4)
        p = np.clip(logged[t], 1e-7, 1 - 1e-7)
        base = log_loss(y, np.full(len(y), y.mean()))
        out[f"{t}_rce"] = round(100 * (1 - log_loss(y, p) / base), 2)
    return out


def main(
    data_dir: Annotated[Path, typer.Option(help="Data directory with features/.")],
    seed: Annotated[int, typer.Option(help="optim.seed.")] = 0,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="A configs/train.yaml override, KEY=YAML.")
    ] = None,
    drop: Annotated[list[str] | None, typer.Option(help="A dense input column to leave out.")] = None,
) -> None:
    """Train the ranker in this process and print its test figures as one JSON line."""
    import yaml

    overrides = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in set_ or [])}
    typer.echo(json.dumps(run(data_dir, seed, overrides, drop or [])))


if __name__ == "__main__":
    typer.run(main)
