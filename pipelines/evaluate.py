"""Offline evaluation: ``python -m pipelines.evaluate --data-dir D [--model-uri URI | --checkpoint DIR]``.

Scores the test split (``D/features/test``) with the ranker and, side by side on the same rows::

    reverse-chron   newest first (−post age at serving): the feed before ranking
    popularity      the post's engagements in the longest counter window before serving
    logistic        one scikit-learn logistic regression per task (ridge for dwell) on the same features
    oracle          the ground-truth probabilities in D/truth/ (synthetic data only): the ceiling

Per task: ROC-AUC, PR-AUC, log loss and expected calibration error (probability models only; ECE from
torchmetrics) and a reliability plot; dwell: MAE in seconds. AUCs and ranking use the scores as served
(every item at the top slot); log loss, ECE, reliability and dwell MAE compare the ranker with what
happened, so they apply its position-bias tower to the logged position. Ranking: NDCG@k (graded
relevance of what the viewer did) and MRR of the value-model order within each request (requests with
no engagement carry no signal and are skipped). The logistic baseline is fitted and scored at position 0.

Writes ``evaluation.json``, ``quality.md`` and plots to ``--out`` (default ``D/evaluation/<name>``);
training runs it at the end and logs the same files to MLflow.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import typer

from models.tasks import BINARY_TASKS, value_score
from pipelines.cli import DataError, exit_on_error
from pipelines.config import EvaluateConfig, TrainConfig, load_config
from pipelines.features import load_manifest

log = logging.getLogger(__name__)

SERVING_POSITION = {"ctx_position": 0.0}
RANKER = "ranker"
SCORERS = (RANKER, "logistic", "popularity", "reverse_chron", "oracle")
LABEL_COLUMNS = ("request_id", *BINARY_TASKS, "dwell_ms", "impression_id")


# --------------------------------------------------------------------------------------------- inputs
def split_files(data_dir: Path, split: str) -> list[str]:
    root = data_dir / "features" / split
    files = sorted(str(p) for p in root.rglob("*.parquet"))
    if not files:
        raise DataError(f"{root}: no examples (run pipelines.features first)")
    return files


def eval_set_id(data_dir: Path, split: str = "test") -> str:
    """Content hash of a split's files: two evaluations are comparable only on the same id."""
    h = hashlib.sha256()
    for f in split_files(data_dir, split):
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:16]


def arrow_columns(table: pa.Table) -> dict[str, np.ndarray]:
    """Arrow columns → numpy without per-row Python objects where possible: fixed-size lists become 2-D
    arrays; variable lists stay object arrays (what :func:`models.batch.collate` takes)."""
    out: dict[str, np.ndarray] = {}
    for name in table.column_names:
        col = table[name].combine_chunks() if table[name].num_chunks != 1 else table[name].chunk(0)
        if pa.types.is_fixed_size_list(col.type):
            flat = col.flatten().to_numpy(zero_copy_only=False)
            out[name] = flat.reshape(len(col), col.type.list_size)
        elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            arr = np.empty(len(col), dtype=object)
            offsets = col.offsets.to_numpy()
            values = col.values.to_numpy(zero_copy_only=False)
            for i in range(len(col)):
                arr[i] = values[offsets[i] : offsets[i + 1]]
            out[name] = arr
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out


def read_columns(data_dir: Path, split: str, columns: list[str] | None = None) -> dict[str, np.ndarray]:
    table = pads.dataset(split_files(data_dir, split), format="parquet").to_table(columns=columns)
    return arrow_columns(table)


def at_serving_position(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    n = len(next(iter(cols.values())))
    return {**cols, **{k: np.full(n, v, np.float32) for k, v in SERVING_POSITION.items() if k in cols}}


# --------------------------------------------------------------------------------------------- scorers
def score_ranker(
    ranker: Any, cols: dict[str, np.ndarray], at_logged_position: bool = False, batch_size: int = 8192
) -> dict[str, np.ndarray]:
    """Per-task outputs of a :class:`models.servable.ServableRanker` in batches: as served (every item at
    the top slot), or ``at_logged_position`` (the position-bias tower applied to the logged position)."""
    n = len(cols[ranker.input_columns[0]])
    names = [*ranker.input_columns, *(ranker.layout.bias if at_logged_position else ())]
    parts: list[dict[str, np.ndarray]] = []
    for lo in range(0, n, batch_size):
        parts.append(ranker.predict({c: cols[c][lo : lo + batch_size] for c in names}, at_logged_position))
    return {t: np.concatenate([p[t] for p in parts]) for t in parts[0]} if parts else {}


def reverse_chron(cols: dict[str, np.ndarray]) -> np.ndarray:
    """Newest first: the negated post age at serving time."""
    return -cols["p_age_h"].astype(np.float64)


def popularity(cols: dict[str, np.ndarray], windows: dict[str, int]) -> np.ndarray:
    """The post's click+like+comment+share count in the longest window (counters are log1p)."""
    w = max(windows, key=lambda k: windows[k])
    total = np.zeros(len(cols[f"p_click_{w}"]), np.float64)
    for a in ("click", "like", "comment", "share"):
        total += np.expm1(cols[f"p_{a}_{w}"].astype(np.float64))
    return total


@dataclass
class LogisticBaseline:
    """One logistic regression per binary task (and ridge on log1p dwell seconds) on the ranker's dense
    inputs, standardized, plus one-hot vocabulary codes. Ids are left out: a linear model cannot use them."""

    dense: tuple[str, ...]
    vectors: dict[str, int]
    codes: tuple[str, ...]
    models: dict[str, Any] = field(default_factory=dict)

    def matrix(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        cols = at_serving_position(cols)
        parts: list[np.ndarray] = [np.stack([cols[c].astype(np.float32) for c in self.dense], axis=1)]
        parts += [np.asarray(cols[v], np.float32).reshape(len(parts[0]), d) for v, d in self.vectors.items()]
        parts += [cols[c].astype(np.int64)[:, None] for c in self.codes]
        return np.concatenate(parts, axis=1)

    def fit(self, cols: dict[str, np.ndarray], weight: np.ndarray, seed: int) -> LogisticBaseline:
        from sklearn.compose import ColumnTransformer
        from sklearn.linear_model import LogisticRegression, Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        x = self.matrix(cols)
        n_num = x.shape[1] - len(self.codes)

        def prep() -> ColumnTransformer:
            return ColumnTransformer(
                [
                    ("num", StandardScaler(), list(range(n_num))),
                    ("cat", OneHotEncoder(handle_unknown="ignore"), list(range(n_num, x.shape[1]))),
                ]
            )

        for task in BINARY_TASKS:
            y = cols[task].astype(np.int64)
            model = make_pipeline(prep(), LogisticRegression(max_iter=300, random_state=seed))
            if y.min() == y.max():  # a task with no positives in the sample: predict its base rate
                model = None
            else:
                model.fit(x, y, logisticregression__sample_weight=weight)
            self.models[task] = (model, float(np.average(y, weights=weight)))
        reg = make_pipeline(prep(), Ridge(alpha=1.0))
        reg.fit(x, np.log1p(cols["dwell_ms"] / 1000.0), ridge__sample_weight=weight)
        self.models["dwell"] = (reg, 0.0)
        return self

    def predict(self, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = self.matrix(cols)
        out: dict[str, np.ndarray] = {}
        for task, (model, base) in self.models.items():
            if task == "dwell":
                out[task] = np.expm1(np.maximum(model.predict(x), 0.0)) * 1000.0
            else:
                out[task] = model.predict_proba(x)[:, 1] if model is not None else np.full(len(x), base)
        return out


def fit_logistic(data_dir: Path, cfg: EvaluateConfig) -> LogisticBaseline:
    manifest = load_manifest(data_dir)
    c = manifest["columns"]
    base = LogisticBaseline(
        dense=tuple(c["dense"]), vectors=dict(c["vectors"]), codes=tuple(c["sparse_vocab"])
    )
    need = [*base.dense, *base.vectors, *base.codes, *BINARY_TASKS, "dwell_ms", "sample_weight"]
    table = pads.dataset(split_files(data_dir, "train"), format="parquet").to_table(columns=need)
    if table.num_rows > cfg.baseline_rows:
        rng = np.random.default_rng(cfg.seed)
        table = table.take(pa.array(np.sort(rng.choice(table.num_rows, cfg.baseline_rows, replace=False))))
    cols = arrow_columns(table)
    return base.fit(cols, cols["sample_weight"].astype(np.float64), cfg.seed)


def oracle(data_dir: Path, impression_ids: np.ndarray) -> dict[str, np.ndarray] | None:
    """Ground-truth probabilities aligned with ``impression_ids``; None without truth/ (real data)."""
    root = data_dir / "truth"
    files = sorted(str(p) for p in root.rglob("*.parquet")) if root.exists() else []
    if not files:
        return None
    truth = pads.dataset(files, format="parquet").to_table()
    idx = pc.index_in(pa.array(impression_ids), truth["impression_id"]).to_numpy(zero_copy_only=False)
    if np.isnan(idx.astype(np.float64)).any():
        log.warning("truth/ lacks some test impressions: no oracle")
        return None
    rows = truth.take(pa.array(idx.astype(np.int64)))

    def col(name: str) -> np.ndarray:
        return np.asarray(rows[name].to_numpy(zero_copy_only=False), np.float64)

    out = {t: col(f"p_{t}") for t in ("click", "like", "comment", "share", "skip")}
    out["hide"] = 1.0 - (1.0 - col("p_hide")) * (1.0 - col("p_report"))  # the label is hide or report
    out["dwell"] = col("expected_dwell_ms")
    return out


# --------------------------------------------------------------------------------------------- metrics
def task_metrics(
    y: np.ndarray, score: np.ndarray, probabilistic: bool, bins: int, prob: np.ndarray | None = None
) -> dict[str, float]:
    """ROC-AUC and PR-AUC of ``score``; log loss and ECE of ``prob`` (default ``score``) when the scorer
    gives probabilities."""
    import torch
    from sklearn.metrics import average_precision_score, log_loss, roc_auc_score
    from torchmetrics.functional.classification import binary_calibration_error

    if y.min() == y.max():
        return {"auc": float("nan"), "pr_auc": float("nan"), "positives": int(y.sum())}
    out = {
        "auc": float(roc_auc_score(y, score)),
        "pr_auc": float(average_precision_score(y, score)),
        "positives": int(y.sum()),
    }
    if probabilistic:
        p = np.clip(score if prob is None else prob, 1e-7, 1 - 1e-7)
        out["log_loss"] = float(log_loss(y, p, labels=[0, 1]))
        out["ece"] = float(binary_calibration_error(torch.from_numpy(p), torch.from_numpy(y), n_bins=bins))
    return out


def ranking_metrics(request_ids: np.ndarray, score: np.ndarray, gain: np.ndarray, k: int) -> dict[str, float]:
    """NDCG@k and MRR over requests with at least one engaged item (torchmetrics retrieval metrics)."""
    import torch
    from torchmetrics.retrieval import RetrievalMRR, RetrievalNormalizedDCG

    idx = torch.from_numpy(np.unique(request_ids, return_inverse=True)[1].astype(np.int64))
    s = torch.from_numpy(np.asarray(score, np.float64))
    g = torch.from_numpy(np.asarray(gain, np.int64))
    ndcg = RetrievalNormalizedDCG(top_k=k, empty_target_action="skip")(s, g, indexes=idx)
    mrr = RetrievalMRR(empty_target_action="skip")(s, g > 0, indexes=idx)
    return {f"ndcg@{k}": float(ndcg), "mrr": float(mrr)}


@dataclass
class Evaluation:
    """Metrics of every scorer on one split; ``models[name]`` has ``tasks``, ranking and dwell entries."""

    eval_set: str
    rows: int
    requests: int
    ndcg_k: int
    models: dict[str, dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {
            "eval_set": self.eval_set,
            "rows": self.rows,
            "requests": self.requests,
            "ndcg_k": self.ndcg_k,
            "models": self.models,
        }

    def flat(self, name: str = RANKER) -> dict[str, float]:
        """One scorer's metrics as flat ``test/...`` keys, MLflow-safe (``test/ndcg_at_10``)."""
        m = self.models[name]
        out = {
            f"test/{t}/{k}": float(v) for t, d in m["tasks"].items() for k, v in d.items() if k != "positives"
        }
        out.update({f"test/{k}": float(v) for k, v in m.items() if k != "tasks"})
        return {k.replace("@", "_at_"): v for k, v in out.items() if np.isfinite(v)}

    def table(self) -> str:
        """The quality table (Markdown): AUC per task and scorer, dwell MAE, NDCG@k, MRR."""
        names = [n for n in SCORERS if n in self.models]
        head = ["scorer", *[f"{t} AUC" for t in BINARY_TASKS], "dwell MAE s", f"NDCG@{self.ndcg_k}", "MRR"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for n in names:
            m = self.models[n]
            aucs = [f"{m['tasks'][t]['auc']:.3f}" for t in BINARY_TASKS]
            mae = f"{m['dwell_mae_s']:.2f}" if "dwell_mae_s" in m else "–"
            row = [n, *aucs, mae, f"{m[f'ndcg@{self.ndcg_k}']:.3f}", f"{m['mrr']:.3f}"]
            lines.append("| " + " | ".join(row) + " |")
        return "\n".join(lines)


def evaluate(
    data_dir: Path,
    scorers: dict[str, Any],
    cfg: EvaluateConfig,
    out_dir: Path | None = None,
    baselines: bool = True,
    split: str = "test",
) -> Evaluation:
    """Evaluate ``scorers`` (name → ServableRanker) and, with ``baselines``, the reference scorers."""
    manifest = load_manifest(data_dir)
    cols = read_columns(data_dir, split)
    n = len(cols["impression_id"])
    if n == 0:
        raise DataError(f"{data_dir / 'features' / split}: no rows to evaluate")
    preds: dict[str, dict[str, np.ndarray]] = {}
    probabilistic: dict[str, bool] = {}
    logged: dict[str, dict[str, np.ndarray]] = {}  # rankers at the logged position: calibration, dwell MAE
    for name, ranker in scorers.items():
        preds[name], probabilistic[name] = score_ranker(ranker, cols), True
        logged[name] = score_ranker(ranker, cols, at_logged_position=True)
    if baselines:
        log.info("fitting the logistic-regression baseline")
        preds["logistic"], probabilistic["logistic"] = fit_logistic(data_dir, cfg).predict(cols), True
        pop = popularity(cols, manifest["config"]["windows"])
        preds["popularity"] = {t: pop for t in BINARY_TASKS}
        chron = reverse_chron(cols)
        preds["reverse_chron"] = {t: chron for t in BINARY_TASKS}
        probabilistic["popularity"] = probabilistic["reverse_chron"] = False
        truth = oracle(data_dir, cols["impression_id"])
        if truth is not None:
            preds["oracle"], probabilistic["oracle"] = truth, True
    gain = sum(w * cols[t].astype(np.int64) for t, w in cfg.relevance.items())
    gain = np.asarray(gain, np.int64) if not np.isscalar(gain) else np.zeros(n, np.int64)
    models: dict[str, dict[str, Any]] = {}
    for name, pred in preds.items():
        calib = logged.get(name, pred)
        m: dict[str, Any] = {
            "tasks": {
                t: task_metrics(
                    cols[t].astype(np.int64), pred[t], probabilistic[name], cfg.calibration_bins, calib[t]
                )
                for t in BINARY_TASKS
            }
        }
        if "dwell" in calib:
            m["dwell_mae_s"] = float(np.mean(np.abs(calib["dwell"] - cols["dwell_ms"]))) / 1000.0
        order = value_score(pred, cfg.value_weights) if "dwell" in pred else pred["click"]
        m.update(ranking_metrics(cols["request_id"], order, gain, cfg.ndcg_k))
        m["mean_auc"] = float(np.nanmean([m["tasks"][t]["auc"] for t in BINARY_TASKS]))
        models[name] = m
    result = Evaluation(
        eval_set=eval_set_id(data_dir, split),
        rows=n,
        requests=len(np.unique(cols["request_id"])),
        ndcg_k=cfg.ndcg_k,
        models={k: models[k] for k in [*scorers, *(s for s in SCORERS if s in models and s not in scorers)]},
    )
    if out_dir is not None:
        write_report(result, cols, preds, {**preds, **logged}, probabilistic, cfg, out_dir)
    return result


# --------------------------------------------------------------------------------------------- outputs
def write_report(
    result: Evaluation,
    cols: dict[str, np.ndarray],
    preds: dict[str, dict[str, np.ndarray]],
    calibrated: dict[str, dict[str, np.ndarray]],
    probabilistic: dict[str, bool],
    cfg: EvaluateConfig,
    out_dir: Path,
) -> list[Path]:
    """``evaluation.json``, ``quality.md``, ``roc.png`` and ``calibration.png`` in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import roc_curve

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(json.dumps(result.to_json(), indent=2, allow_nan=True))
    (out_dir / "quality.md").write_text(result.table() + "\n")
    paths = [out_dir / "evaluation.json", out_dir / "quality.md"]
    for kind in ("roc", "calibration"):
        fig, axes = plt.subplots(2, 3, figsize=(13, 8))
        for ax, task in zip(axes.flat, BINARY_TASKS, strict=True):
            y = cols[task].astype(np.int64)
            for name, pred in preds.items():
                if y.min() == y.max() or (kind == "calibration" and not probabilistic[name]):
                    continue
                if kind == "roc":
                    fpr, tpr, _ = roc_curve(y, pred[task])
                    auc = result.models[name]["tasks"][task]["auc"]
                    ax.plot(fpr, tpr, label=f"{name} {auc:.3f}")
                else:
                    frac, mean = calibration_curve(
                        y,
                        np.clip(calibrated[name][task], 0, 1),
                        n_bins=cfg.calibration_bins,
                        strategy="quantile",
                    )
                    ece = result.models[name]["tasks"][task].get("ece", float("nan"))
                    ax.plot(mean, frac, marker=".", label=f"{name} ECE {ece:.3f}")
            lim = [0, 1] if kind == "roc" else [0, max(0.05, float(cols[task].mean()) * 3)]
            ax.plot(lim, lim, "k:", lw=0.8)
            ax.set_title(task)
            ax.set_xlabel("false positive rate" if kind == "roc" else "predicted probability")
            ax.set_ylabel("true positive rate" if kind == "roc" else "observed frequency")
            ax.legend(fontsize=7)
        fig.suptitle(
            f"{'ROC' if kind == 'roc' else 'Reliability'} on the test split ({result.rows} impressions)"
        )
        fig.tight_layout()
        fig.savefig(out_dir / f"{kind}.png", dpi=90)
        plt.close(fig)
        paths.append(out_dir / f"{kind}.png")
    return paths


def load_ranker(model_uri: str | None, checkpoint: Path | None, data_dir: Path) -> tuple[str, Any]:
    """A ServableRanker from an MLflow model URI or a training checkpoint folder."""
    if checkpoint is not None:
        from pipelines.train import load_trained

        return str(checkpoint), load_trained(checkpoint)
    from pipelines.tracking import configure, load_ranker_version

    configure(data_dir)
    uri = model_uri or "models:/feed-ranker@champion"
    return uri, load_ranker_version(uri)


app = typer.Typer(add_completion=False, help=__doc__.split("\n")[0])


@app.command()
def main(
    data_dir: Annotated[Path, typer.Option(help="Data directory holding features/ (and truth/).")],
    model_uri: Annotated[
        str | None, typer.Option(help="MLflow model URI (default models:/feed-ranker@champion).")
    ] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="A training checkpoint folder instead.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config (configs/train.yaml).")] = Path(
        "configs/train.yaml"
    ),
    out: Annotated[Path | None, typer.Option(help="Output folder (default D/evaluation/latest).")] = None,
) -> None:
    """Evaluate a ranker and the baselines on the test split; print the quality table."""
    from pipelines.runtime import setup_logging

    setup_logging()
    with exit_on_error():
        cfg = load_config(config, TrainConfig)
        name, ranker = load_ranker(model_uri, checkpoint, data_dir)
        result = evaluate(data_dir, {RANKER: ranker}, cfg.evaluate, out or data_dir / "evaluation" / "latest")
        typer.echo(
            f"{name} on test split {result.eval_set}: {result.rows} impressions, {result.requests} requests"
        )
        typer.echo(result.table())


if __name__ == "__main__":
    app()
