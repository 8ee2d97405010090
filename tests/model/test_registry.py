"""MLflow registry: every run is a ``feed-ranker`` version aliased ``challenger``; the logged model (loaded
without Ray, sharding or the training code) gives exactly the eager model's outputs; ``pipelines.promote``
moves ``champion`` only to a version that beats it (or with ``--force``), and an alias moved by hand is
just as servable."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from models.servable import ServableRanker
from pipelines.common import tracking
from pipelines.common.tracking import load_trained
from pipelines.features.manifest import read_columns
from pipelines.promote.stage import run as promote
from tests.conftest import Runs, assert_ui_serves_artifacts, train_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]
NAME = "feed-ranker"


def test_each_run_is_a_version_and_the_latest_is_challenger(published: Runs) -> None:
    tracking.configure(published.data_dir)
    assert (published.first.version, published.resumed.version) == ("1", "2")
    challenger = tracking.version_of(NAME, tracking.CHALLENGER)
    assert challenger is not None
    assert str(challenger.version) == "2"
    info = mlflow.models.get_model_info(f"models:/{NAME}/2")
    assert info.signature is not None
    assert "click" in info.signature.outputs.input_names()
    assert "sp_topics" in info.signature.inputs.input_names()


def test_logged_model_equals_the_eager_model(published: Runs) -> None:
    tracking.configure(published.data_dir)
    eager = load_trained(published.resumed.checkpoint)
    cols = read_columns(published.data_dir, "test")
    frame = tracking.example_frame(eager.input_columns, cols, rows=400)  # JSON-like rows, as a client sends
    served = mlflow.pyfunc.load_model(f"models:/{NAME}/2").predict(frame)
    expected = eager.predict({c: frame[c].to_numpy() for c in eager.input_columns})
    for task, values in expected.items():
        column = "dwell_ms" if task == "dwell" else task
        np.testing.assert_allclose(served[column].to_numpy(), values, rtol=1e-6, atol=1e-6)
    assert len(served) == 400


def _champion() -> str:
    version = tracking.version_of(NAME, tracking.CHAMPION)
    assert version is not None
    return str(version.version)


def _worse_version(runs: Runs) -> str:
    """Version 2 with its click head silenced: click AUC drops to chance."""
    ranker = load_trained(runs.resumed.checkpoint)
    head = ranker.model.heads["click"]
    assert isinstance(head, torch.nn.Linear)
    with torch.no_grad():
        head.weight.zero_()
    worse = ServableRanker(ranker.model, ranker.layout, ranker.encoder)
    tracking.configure(runs.data_dir)
    with mlflow.start_run(experiment_id=tracking.experiment_id("test-ranker", runs.data_dir)):
        return str(tracking.log_ranker(worse, read_columns(runs.data_dir, "test"), NAME).version)


def test_promotion_gate(published: Runs) -> None:
    cfg = train_config(2)
    d = published.data_dir
    first = promote(d, cfg, version="1")
    assert first.promoted
    assert first.reason.startswith("first champion")
    assert promote(d, cfg, version="1").promoted is False  # already champion: nothing to do

    worse = _worse_version(published)
    rejected = promote(d, cfg, version=worse)
    client = MlflowClient()
    assert not rejected.promoted
    assert "AUC guardrail: click" in rejected.reason
    assert _champion() == "1"
    tags = client.get_model_version(NAME, worse).tags
    assert tags["promotion.decision"] == "rejected"
    assert tags["promotion.eval_set"] == rejected.eval_set

    forced = promote(d, cfg, version=worse, force=True, note="drill")
    assert forced.promoted
    assert forced.reason.startswith("forced (drill)")
    assert _champion() == worse
    assert client.get_model_version(NAME, worse).tags["promotion.previous_champion"] == "1"


def test_alias_moved_by_hand_is_what_loads(published: Runs) -> None:
    tracking.configure(published.data_dir)
    MlflowClient().set_registered_model_alias(NAME, tracking.CHAMPION, "2")  # what the MLflow UI does
    served = tracking.load_ranker_version(f"models:/{NAME}@{tracking.CHAMPION}")
    eager = load_trained(published.resumed.checkpoint)
    for key, value in eager.model.state_dict().items():
        assert torch.equal(served.model.state_dict()[key], value), key


def test_make_ui_serves_the_embedded_stores_runs_with_their_artifacts(published: Runs) -> None:
    assert_ui_serves_artifacts(published.data_dir, published.first.run_id)
