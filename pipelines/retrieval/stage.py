"""The retrieval stage: train the two-tower retriever on Ray Train (TorchRec), measure its recall on the
test split beside the peers, log to MLflow and register a ``feed-retriever`` version (alias
``challenger``; the gate in :mod:`pipelines.promote.gate` decides ``champion``) with its post vectors
(a Ray Data job, :mod:`pipelines.retrieval.post_index`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pipelines.common.config import RetrieverConfig
from pipelines.common.tracking import MODEL_FILE
from pipelines.retrieval.post_index import log_post_index
from pipelines.retrieval.recall import Recall, evaluate_recall
from pipelines.retrieval.setup import RetrieverTraining, build_setup
from pipelines.train.trainer import best_checkpoint, fit, run_name

log = logging.getLogger(__name__)


@dataclass
class PublishedRetriever:
    """What a finished retriever run left behind."""

    run_id: str
    model_name: str
    version: str
    checkpoint: Path
    recall: Recall


def run(cfg: RetrieverConfig, data_dir: Path, resume: bool = False) -> PublishedRetriever:
    """Train (rank 0 logging into an MLflow run), measure recall@K on the test split, register a new
    ``feed-retriever`` version and point alias ``challenger`` at it."""
    import mlflow
    from mlflow import MlflowClient

    from models.retriever import ServableRetriever
    from pipelines.common import tracking
    from pipelines.features.manifest import read_columns

    uri = tracking.configure(data_dir)
    exp = tracking.experiment_id(cfg.experiment, data_dir)
    name = run_name(cfg.experiment, data_dir, resume)
    run_file = data_dir / "train_runs" / name / "mlflow_run_id"
    previous = run_file.read_text().strip() if resume and run_file.exists() else None
    setup = build_setup(data_dir, cfg)
    with mlflow.start_run(run_id=previous, experiment_id=None if previous else exp, run_name=name) as run:
        run_file.parent.mkdir(parents=True, exist_ok=True)
        run_file.write_text(run.info.run_id)
        if previous is None:
            mlflow.log_params(tracking.flat_params(cfg.model_dump(mode="json")))
            mlflow.log_dict(cfg.model_dump(mode="json"), "config/retriever.yaml")
            mlflow.set_tags({"data_dir": str(data_dir.resolve()), "ray_train_run": name})
        training = RetrieverTraining(setup)
        track = {"uri": uri, "run_id": run.info.run_id}
        result = fit(training, setup.columns, cfg.optim, cfg.distributed, data_dir, name, track)
        checkpoint = best_checkpoint(result)
        mlflow.set_tag("checkpoint", str(checkpoint))
        retriever = ServableRetriever.load(checkpoint / MODEL_FILE)
        recall = evaluate_recall(data_dir, retriever, setup, cfg.evaluate)
        mlflow.log_metrics(recall.flat())
        mlflow.set_tag("eval_set", recall.eval_set)
        model = cfg.registry.model_name
        version = str(tracking.log_retriever(retriever, read_columns(data_dir, "test"), model).version)
        client = MlflowClient()
        client.set_registered_model_alias(model, tracking.CHALLENGER, version)
        client.set_model_version_tag(model, version, "eval_set", recall.eval_set)
        posts = log_post_index(data_dir, checkpoint / MODEL_FILE, cfg.post_index)
        client.set_model_version_tag(model, version, "post_index.posts", str(posts))
        for k, v in recall.recall["retriever"].items():
            client.set_model_version_tag(model, version, f"recall_at_{k}", f"{v:.4f}")
    log.info("registered %s version %s (alias %s)", model, version, tracking.CHALLENGER)
    return PublishedRetriever(run.info.run_id, model, version, checkpoint, recall)
