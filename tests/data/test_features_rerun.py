"""Re-running features on the same logs reuses every text embedding and reproduces the examples."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipelines.features.stage import run as features
from pipelines.features.manifest import read_split
from tests.conftest import tiny_config

pytestmark = pytest.mark.ray


def test_rerun_reuses_embeddings_and_is_reproducible(built_world: Path, tmp_path: Path) -> None:
    for name in ("clean", "features"):
        shutil.copytree(built_world / name, tmp_path / name)
    manifest = features(tiny_config().features, tmp_path)
    assert manifest["text_encoder"]["posts_encoded"] == 0
    assert manifest["text_encoder"]["posts_reused"] > 0
    for split in ("train", "valid", "test"):
        before = read_split(built_world, split).sort_by("impression_id")
        after = read_split(tmp_path, split).sort_by("impression_id")
        assert before.equals(after), split
