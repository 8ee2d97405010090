"""``tracking.pointed_at``: a block that talks to another MLflow server leaves nothing of it behind (the
client's URIs and the variables subprocesses inherit), whatever was set before."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest

from pipelines.common import tracking

NAMES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@pytest.mark.parametrize("configured_before", [False, True])
def test_pointed_at_restores_the_client_and_the_environment(
    configured_before: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    # Set first, so that teardown restores what was there, even nothing: configure() below sets them.
    for k in NAMES:
        monkeypatch.setenv(k, "unset")
        monkeypatch.delenv(k)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(registry_utils, "_registry_uri", None)
    if configured_before:
        tracking.configure(tmp_path)
    env = {k: os.environ.get(k) for k in NAMES}
    client = mlflow.get_tracking_uri(), mlflow.get_registry_uri()

    with tracking.pointed_at("http://127.0.0.1:1"):
        # The client talks to it at once, even where configure() had set it to another store before.
        assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == ("http://127.0.0.1:1",) * 2
        assert tracking.configure(tmp_path / "elsewhere") == "http://127.0.0.1:1"
        assert mlflow.get_registry_uri() == "http://127.0.0.1:1"
    assert {k: os.environ.get(k) for k in NAMES} == env
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == client


@pytest.fixture
def clean_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """No tracking URI set before; whatever the test sets is undone afterwards."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    for k in NAMES:
        monkeypatch.setenv(k, "unset")
        monkeypatch.delenv(k)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(registry_utils, "_registry_uri", None)


def test_the_embedded_store_follows_the_data_dir_and_keeps_artifacts_in_it(
    clean_mlflow: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd, first, second = tmp_path / "cwd", tmp_path / "first", tmp_path / "second"
    for d in (cwd, first, second):
        d.mkdir()
    monkeypatch.chdir(cwd)
    assert tracking.configure(first) == f"sqlite:///{first / 'mlflow.db'}"
    # configure() left the first store in MLFLOW_TRACKING_URI: it is not a server the user chose
    assert tracking.configure(second) == f"sqlite:///{second / 'mlflow.db'}"
    assert mlflow.get_tracking_uri() == f"sqlite:///{second / 'mlflow.db'}"
    with mlflow.start_run(experiment_id=tracking.experiment_id("exp", second)):
        mlflow.log_text("hello", "note.txt")
    assert list(cwd.iterdir()) == []  # nothing in the working directory (no ./mlruns)
    assert (second / "mlartifacts" / "exp").is_dir()
    assert not (first / "mlartifacts").exists()


def test_a_tracking_server_the_user_set_wins(clean_mlflow: None, tmp_path: Path) -> None:
    os.environ["MLFLOW_TRACKING_URI"] = "http://127.0.0.1:1"
    assert tracking.tracking_uri(tmp_path) == "http://127.0.0.1:1"
    assert not tracking.is_embedded(tmp_path)


def test_evaluate_without_a_registered_ranker_is_one_clear_error(clean_mlflow: None, tmp_path: Path) -> None:
    from pipelines.common.cli import DataError
    from pipelines.evaluate.stage import load_ranker

    with pytest.raises(DataError, match=r"no feed-ranker@champion or @challenger to evaluate"):
        load_ranker(None, None, tmp_path)
