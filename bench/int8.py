"""Does int8 pay for the ranker? ``python -m bench.int8 --data-dir D`` (after ``make demo``).

The registered champion in fp32 against the same model quantized as issue 18 proposes: TorchRec's
quantized embedding tables (``torchrec.quant.EmbeddingBagCollection``, int8 rows) and PyTorch's dynamic
int8 ``Linear`` layers (``torch.ao.quantization.quantize_dynamic``: weights int8, activations quantized per
batch). On ``D``'s test split:

- quality: ROC-AUC per task of both, and per request the Kendall tau between the two orders of the value
  score (``feed.value_weights`` of configs/serve.yaml), i.e. how much the feed's order would change;
- speed: the forward on 1,000 rows (a feed's candidates), one torch thread, both alternated in one run.

Writes the "int8 ranker (issue 18)" section of ``--out``.
"""

from __future__ import annotations

import copy
import datetime as dt
import statistics
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from bench.report import machine, publish
from pipelines.common.runtime import REPO


def quantized(ranker: Any) -> Any:
    """A copy of a :class:`models.servable.ServableRanker` with int8 embedding tables and int8 linears."""
    import torch
    from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEBC

    from models.servable import ServableRanker

    model = copy.deepcopy(ranker.model).eval()
    ebc = model.sparse_arch.embedding_bag_collection
    ebc.qconfig = torch.ao.quantization.QConfig(
        activation=torch.ao.quantization.PlaceholderObserver.with_args(dtype=torch.float),
        weight=torch.ao.quantization.PlaceholderObserver.with_args(dtype=torch.qint8),
    )
    model.sparse_arch.embedding_bag_collection = QuantEBC.from_float(ebc)
    model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    return ServableRanker(model, ranker.layout, ranker.encoder)


def kendall_per_request(
    request_ids: np.ndarray, a: np.ndarray, b: np.ndarray, min_items: int = 5
) -> np.ndarray:
    """Kendall's tau between the orders ``a`` and ``b`` give each request's items (requests with at least
    ``min_items``)."""
    from scipy.stats import kendalltau

    order = np.argsort(request_ids, kind="stable")
    rid = request_ids[order]
    starts = np.flatnonzero(np.r_[True, rid[1:] != rid[:-1]])
    ends = np.r_[starts[1:], len(rid)]
    out = []
    for lo, hi in zip(starts, ends, strict=True):
        if hi - lo >= min_items:
            rows = order[lo:hi]
            tau = kendalltau(a[rows], b[rows]).statistic
            if np.isfinite(tau):
                out.append(float(tau))
    return np.array(out)


def forward_ms(ranker: Any, cols: dict[str, np.ndarray], rounds: int) -> float:
    """Median ms of ``predict`` (collate + forward) on ``cols``."""
    ranker.predict(cols)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        ranker.predict(cols)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main(
    data_dir: Annotated[Path, typer.Option(help="A data directory after make demo.")] = Path("data/demo"),
    rounds: Annotated[int, typer.Option(help="Timed forwards per variant and round.")] = 20,
    out: Annotated[Path | None, typer.Option(help="Markdown file to write the section into.")] = None,
) -> None:
    import torch

    from models.tasks import BINARY_TASKS, value_score
    from pipelines.evaluate.metrics import task_metrics
    from pipelines.evaluate.scorers import score_ranker
    from pipelines.evaluate.stage import load_ranker
    from pipelines.features.manifest import read_columns
    from serve.config import load_serve_yaml

    torch.set_num_threads(1)
    uri, fp32 = load_ranker(None, None, data_dir)
    int8 = quantized(fp32)
    cols = read_columns(data_dir, "test")
    _, cfg = load_serve_yaml(REPO / "configs" / "serve.yaml")
    preds = {"fp32": score_ranker(fp32, cols), "int8": score_ranker(int8, cols)}
    auc = {
        name: {t: task_metrics(cols[t].astype(np.int64), p[t], False, 10)["auc"] for t in BINARY_TASKS}
        for name, p in preds.items()
    }
    value = {name: np.asarray(value_score(p, cfg.feed.value_weights)) for name, p in preds.items()}
    tau = kendall_per_request(np.asarray(cols["request_id"]), value["fp32"], value["int8"])
    feed = {c: v[:1000] for c, v in cols.items()}  # a feed's worth of candidates
    speed: dict[str, list[float]] = {"fp32": [], "int8": []}
    for _ in range(5):  # alternated: both under the same conditions
        for name, ranker in (("fp32", fp32), ("int8", int8)):
            speed[name].append(forward_ms(ranker, feed, rounds))
    ms = {k: statistics.median(v) for k, v in speed.items()}
    drop = {t: auc["fp32"][t] - auc["int8"][t] for t in BINARY_TASKS}
    lines = [
        "## int8 ranker (issue 18)",
        "",
        f"Measured {dt.date.today().isoformat()} on {machine()}, with `python -m bench.int8 --data-dir "
        f"{data_dir}`: the registered ranker ({uri}) in fp32 and quantized (TorchRec's int8 embedding "
        "tables, `torchrec.quant.EmbeddingBagCollection`; dynamic int8 `Linear` layers, "
        f"`torch.ao.quantization.quantize_dynamic`), on the test split ({len(cols['request_id'])} rows).",
        "",
        "| task | fp32 AUC | int8 AUC | fp32 − int8 |",
        "|---|---:|---:|---:|",
        *(f"| {t} | {auc['fp32'][t]:.4f} | {auc['int8'][t]:.4f} | {drop[t]:+.4f} |" for t in BINARY_TASKS),
        "",
        f"Order of the feed (value score, configs/serve.yaml's weights), Kendall tau fp32 vs int8 over "
        f"{len(tau)} requests of ≥ 5 items: median {np.median(tau):.3f}, 5th percentile "
        f"{np.percentile(tau, 5):.3f}, minimum {tau.min():.3f}.",
        "",
        f"`predict` (collate + forward) on 1,000 rows, 1 torch thread, median of 5 × {rounds} alternated: "
        f"fp32 {ms['fp32']:.2f} ms, int8 {ms['int8']:.2f} ms ({ms['fp32'] / ms['int8']:.2f}× the speed).",
        "",
        f"Largest AUC drop: {max(drop.values()):+.4f} (target ≤ 0.002).",
    ]
    publish("\n".join(lines) + "\n", out)


if __name__ == "__main__":
    typer.run(main)
