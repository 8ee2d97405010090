"""Splits by time (``features.split_by: time``): cut timestamps or served_at quantiles, a cut may divide a
day, every split is later than the one before, and an impression's features are the same whichever split
it lands in (splits only route rows; every feature stays point-in-time, see test_leakage)."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from pipelines.common.cli import DataError
from pipelines.features.manifest import read_split
from pipelines.features.stage import run as features
from tests.conftest import tiny_config

pytestmark = pytest.mark.ray


def _served_ms(d: Path, split: str) -> np.ndarray:
    return pc.cast(read_split(d, split, ["served_at"])["served_at"], "int64").to_numpy()


def test_quantile_cuts_divide_days_and_keep_time_order(built_world: Path, tmp_path: Path) -> None:
    for name in ("clean", "features"):
        shutil.copytree(built_world / name, tmp_path / name)
    cfg = tiny_config().features.model_copy(
        update={"split_by": "time", "test_fraction": 0.3, "valid_fraction": 0.15}
    )
    manifest = features(cfg, tmp_path)
    assert manifest["split_by"]["by"] == "time"
    train, valid, test = (_served_ms(tmp_path, s) for s in ("train", "valid", "test"))
    assert train.max() < valid.min() <= valid.max() < test.min()
    test_from = dt.datetime.fromisoformat(manifest["split_by"]["test_from"])
    assert test.min() >= test_from.timestamp() * 1000
    n = {s: manifest["splits"][s]["impressions"] for s in ("train", "valid", "test")}
    assert 0.25 < n["test"] / sum(n.values()) < 0.35  # the quantile, up to ties
    days = {s: set(manifest["splits"][s]["days"]) for s in ("train", "valid", "test")}
    assert days["valid"] & (days["train"] | days["test"]), "a cut inside a day splits that day"
    # The same impression has the same features whichever split it is in (the day-split build).
    by_day = read_split(built_world, "test").to_pandas().set_index("impression_id")
    by_time = read_split(tmp_path, "test").to_pandas().set_index("impression_id")
    common = by_day.index.intersection(by_time.index)
    assert len(common) > 0
    cols = [c for c in by_day.columns if c.startswith(("u_", "a_", "p_", "ua_", "x_")) and c in by_time.columns]
    assert cols
    a, b = by_day.loc[common, cols], by_time.loc[common, cols]
    for c in cols:
        assert np.allclose(np.stack(a[c].to_numpy()), np.stack(b[c].to_numpy()), equal_nan=True), c


def test_cut_timestamps_and_an_empty_split_is_a_clear_error(built_world: Path, tmp_path: Path) -> None:
    for name in ("clean", "features"):
        shutil.copytree(built_world / name, tmp_path / name)
    late = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
    cfg = tiny_config().features.model_copy(update={"split_by": "time", "test_from": late})
    with pytest.raises(DataError, match="leaves an empty train or test split"):
        features(cfg, tmp_path)
