"""One published training run shared by the model tests: two Ray Train workers on CPU (TorchRec table-wise
sharding over gloo), a first run of one epoch and a resumed run to the second epoch, each evaluated,
logged to an embedded MLflow store in the data directory and registered as a ``feed-ranker`` version."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.config import TrainConfig, load_config
from pipelines.train import Published

REPO = Path(__file__).resolve().parents[2]


def train_config(epochs: int) -> TrainConfig:
    """configs/train.yaml shrunk for the tiny world: small batches, a few dozen steps."""
    return load_config(
        REPO / "configs" / "train.yaml",
        TrainConfig,
        {
            "optim.epochs": epochs,
            "optim.batch_size": 32,
            "optim.dense_lr": 0.005,
            "optim.report_every": 4,
            "evaluate.baseline_rows": 2000,
            "experiment": "test-ranker",
        },
    )


@dataclass
class Runs:
    data_dir: Path
    first: Published
    resumed: Published


@pytest.fixture(scope="session")
def published(built_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    from pipelines.train import train_and_publish

    d = tmp_path_factory.mktemp("published")
    for sub in ("features", "truth"):
        shutil.copytree(built_world / sub, d / sub)
    first = train_and_publish(train_config(1), d)
    resumed = train_and_publish(train_config(2), d, resume=True)
    return Runs(d, first, resumed)
