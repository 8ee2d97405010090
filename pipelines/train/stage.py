"""The train stage: train, evaluate against the baselines, log to MLflow and register a version."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.common.config import TrainConfig
from pipelines.common.tracking import load_trained
from pipelines.train.trainer import best_checkpoint, run_name, train

log = logging.getLogger(__name__)


@dataclass
class Published:
    """What a finished training run left behind: its MLflow run, registered version and evaluation."""

    run_id: str
    model_name: str
    version: str
    checkpoint: Path
    evaluation: Any  # pipelines.evaluate.evaluation.Evaluation


def run(cfg: TrainConfig, data_dir: Path, resume: bool = False) -> Published:
    """Train (rank 0 logging into an MLflow run), evaluate on the test split against the baselines, log
    config, metrics, plots and the servable model, register a new ``feed-ranker`` version and point alias
    ``challenger`` at it. ``resume`` continues the last run, its checkpoint and its MLflow run."""
    import mlflow

    from pipelines.common import tracking

    uri = tracking.configure(data_dir)
    exp = tracking.experiment_id(cfg.experiment, data_dir)
    name = run_name(cfg.experiment, data_dir, resume)
    run_file = data_dir / "train_runs" / name / "mlflow_run_id"
    previous = run_file.read_text().strip() if resume and run_file.exists() else None
    with mlflow.start_run(run_id=previous, experiment_id=None if previous else exp, run_name=name) as run:
        run_id = run.info.run_id
        run_file.parent.mkdir(parents=True, exist_ok=True)
        run_file.write_text(run_id)
        if previous is None:
            _log_inputs(cfg, data_dir, name)
        peers = _fit_peers_beside_training(cfg, data_dir)
        try:
            result = train(cfg, data_dir, resume=resume, name=name, tracking={"uri": uri, "run_id": run_id})
        except BaseException:
            import ray

            ray.cancel(peers)
            raise
        checkpoint = best_checkpoint(result)
        mlflow.set_tag("checkpoint", str(checkpoint))
        ranker = load_trained(checkpoint)
        evaluation = _evaluate(cfg, data_dir, name, run_id, ranker, peers)
        version = _register(cfg, data_dir, ranker, evaluation)
    log.info("registered %s version %s (alias %s)", cfg.registry.model_name, version, tracking.CHALLENGER)
    return Published(run_id, cfg.registry.model_name, version, checkpoint, evaluation)


def _log_inputs(cfg: TrainConfig, data_dir: Path, name: str) -> None:
    """A new run's params, resolved config, features manifest and tags."""
    import mlflow

    from pipelines.common import tracking

    mlflow.log_params(tracking.flat_params(cfg.model_dump(mode="json")))
    mlflow.log_dict(cfg.model_dump(mode="json"), "config/train.yaml")
    mlflow.log_artifact(str(data_dir / "features" / "manifest.json"), "data")
    mlflow.set_tags({"data_dir": str(data_dir.resolve()), "ray_train_run": name})


def _fit_peers_beside_training(cfg: TrainConfig, data_dir: Path) -> Any:
    """A Ray task fitting the peers (logistic regression, LightGBM) while the ranker trains: they depend on
    the features only, and the train workers leave a CPU free (fitting them after training took ~50 s of
    the train stage's ~130 s at demo scale)."""
    import ray

    from pipelines.common.runtime import task_cpus
    from pipelines.evaluate.scorers import fit_peers

    return ray.remote(num_cpus=task_cpus())(fit_peers).remote(data_dir, cfg.evaluate)


def _evaluate(
    cfg: TrainConfig, data_dir: Path, name: str, run_id: str, ranker: Any, peers: Any = None
) -> Any:
    """The test split scored by the ranker and the baselines (``peers``: the Ray task fitting them, or None
    to fit them here); the report, plots and metrics into the run."""
    import mlflow
    import ray
    from mlflow import MlflowClient

    from pipelines.evaluate.evaluation import RANKER, evaluate

    out = data_dir / "evaluation" / name
    fitted = ray.get(peers) if peers is not None else None
    evaluation = evaluate(data_dir, {RANKER: ranker}, cfg.evaluate, out_dir=out, peers=fitted)
    _loss_plot(MlflowClient(), run_id, out / "losses.png")
    mlflow.log_artifacts(str(out), "evaluation")
    mlflow.log_metrics(evaluation.flat(RANKER))
    for baseline in evaluation.models:
        if baseline != RANKER:
            mlflow.log_metrics(
                {f"baseline/{baseline}/{k[5:]}": v for k, v in evaluation.flat(baseline).items()}
            )
    mlflow.set_tag("eval_set", evaluation.eval_set)
    return evaluation


def _register(cfg: TrainConfig, data_dir: Path, ranker: Any, evaluation: Any) -> str:
    """Log the servable ranker as a new registered version, alias it ``challenger`` and tag it with the
    evaluation set and headline metrics; returns the version."""
    from mlflow import MlflowClient

    from pipelines.common import tracking
    from pipelines.evaluate.evaluation import RANKER
    from pipelines.features.manifest import read_columns

    name = cfg.registry.model_name
    version = str(tracking.log_ranker(ranker, read_columns(data_dir, "test"), name).version)
    client = MlflowClient()
    client.set_registered_model_alias(name, tracking.CHALLENGER, version)
    client.set_model_version_tag(name, version, "eval_set", evaluation.eval_set)
    metrics = evaluation.flat(RANKER)
    for k in (f"ndcg_at_{cfg.evaluate.ndcg_k}", "mrr", "mean_auc"):
        if f"test/{k}" in metrics:
            client.set_model_version_tag(name, version, k, f"{metrics[f'test/{k}']:.4f}")
    return version


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
