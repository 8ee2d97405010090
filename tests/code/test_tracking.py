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
        assert tracking.configure(tmp_path / "elsewhere") == "http://127.0.0.1:1"
        assert mlflow.get_registry_uri() == "http://127.0.0.1:1"
    assert {k: os.environ.get(k) for k in NAMES} == env
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == client
