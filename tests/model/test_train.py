"""Distributed training on CPU: two Ray Train workers, TorchRec table-wise sharding over gloo, a few steps.

The validation loss falls, every epoch leaves a checkpoint, a stopped run resumes where it stopped, and the
gathered unsharded model loads without the cluster and scores the held-out split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.batch import collate
from pipelines.config import TrainConfig, load_config
from pipelines.features import read_split
from pipelines.train import load_trained, train

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _config(epochs: int) -> TrainConfig:
    return load_config(
        REPO / "configs" / "train.yaml",
        TrainConfig,
        {
            "optim.epochs": epochs,
            "optim.batch_size": 64,
            "optim.dense_lr": 0.01,
            "optim.report_every": 4,
            "experiment": "test-ranker",
        },
    )


@pytest.fixture(scope="module")
def trained(built_world: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, object]:
    import shutil

    d = tmp_path_factory.mktemp("train")
    shutil.copytree(built_world / "features", d / "features")
    first = train(_config(1), d)
    resumed = train(_config(2), d, resume=True)
    return d, first, resumed


def test_loss_falls_and_checkpoints_each_epoch(trained: tuple[Path, object, object]) -> None:
    _, first, resumed = trained
    # Validation loss after epoch 0 (first run) and after epoch 1 (resumed run), same validation split.
    assert resumed.metrics["valid/loss"] < first.metrics["valid/loss"]  # type: ignore[attr-defined]
    assert np.isfinite(resumed.metrics["loss/total"])  # type: ignore[attr-defined]
    assert resumed.metrics["samples_per_s"] > 0  # type: ignore[attr-defined]
    assert (Path(first.checkpoint.path) / "rank-0.pt").exists()  # type: ignore[attr-defined]
    assert (Path(first.checkpoint.path) / "rank-1.pt").exists()  # type: ignore[attr-defined]
    assert (Path(resumed.checkpoint.path) / "model.pt").exists()  # type: ignore[attr-defined]


def test_resume_continues_from_the_last_checkpoint(trained: tuple[Path, object, object]) -> None:
    _, first, resumed = trained
    assert first.metrics["epoch"] == 0  # type: ignore[attr-defined]
    assert resumed.metrics["epoch"] == 1  # type: ignore[attr-defined]
    assert resumed.metrics["step"] > first.metrics["step"]  # type: ignore[attr-defined]


def test_gathered_model_loads_unsharded_and_scores(
    trained: tuple[Path, object, object], built_world: Path
) -> None:
    _, _, resumed = trained
    model, setup = load_trained(Path(resumed.checkpoint.path))  # type: ignore[attr-defined]
    test = read_split(built_world, "test").to_pandas()
    batch = collate({c: test[c].to_numpy() for c in test.columns}, setup.layout, setup.encoder)
    with torch.no_grad():
        out = model(batch.dense, batch.sparse)
    assert set(out) == set(setup.spec.tasks)
    assert all(torch.isfinite(v).all() for v in out.values())
    assert out["click"].shape == (len(test),)
