"""Typed configs: unknown keys and wrong types are errors that name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.common.config import ConfigError, DataConfig, TrainConfig, dump_config, load_config

REPO = Path(__file__).resolve().parents[2]


def test_repo_config_is_valid_and_matches_defaults() -> None:
    """configs/*.yaml spell out the embedded defaults: a config file that names only what it changes (like
    docs/examples/ratings/train.yaml) gets the same recipe."""
    cfg = load_config(REPO / "configs" / "data.yaml", DataConfig)
    assert cfg.synth.users == 2000
    assert cfg.features.windows == {"1h": 3600, "1d": 86400, "7d": 604800}
    assert cfg == load_config(None, DataConfig)
    assert load_config(REPO / "configs" / "train.yaml", TrainConfig) == load_config(None, TrainConfig)


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("synth:\n  userz: 10\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: synth\.userz: Extra inputs are not permitted"):
        load_config(p, DataConfig)


def test_wrong_type_names_file_and_key(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("features:\n  negative_keep_rate: lots\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: features\.negative_keep_rate"):
        load_config(p, DataConfig)


def test_string_numbers_are_not_silently_accepted_for_bounds(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("features:\n  negative_keep_rate: 0\n")
    with pytest.raises(ConfigError, match="greater than 0"):
        load_config(p, DataConfig)


def test_not_a_mapping_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(p, DataConfig)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml", DataConfig)


def test_window_names_cannot_collide_with_the_all_time_counters_or_rates() -> None:
    for name in ("all", "rate"):
        with pytest.raises(ConfigError, match="windows need alphanumeric names"):
            load_config(None, DataConfig, {"features.windows": {name: 3600}})


def test_overrides_are_validated_too() -> None:
    assert load_config(None, DataConfig, {"synth.users": 50}).synth.users == 50
    with pytest.raises(ConfigError, match=r"synth\.users"):
        load_config(None, DataConfig, {"synth.users": -1})
    with pytest.raises(ConfigError, match="mean_degree"):
        load_config(None, DataConfig, {"synth.users": 20, "synth.mean_degree": 40.0})


def test_dump_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, DataConfig, {"synth.seed": 7})
    p = tmp_path / "dumped.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(p, DataConfig) == cfg


def test_train_config_rejects_unknown_tasks_in_the_value_model(tmp_path: Path) -> None:
    from pipelines.common.config import TrainConfig

    assert load_config(REPO / "configs" / "train.yaml", TrainConfig).registry.model_name == "feed-ranker"
    p = tmp_path / "bad.yaml"
    p.write_text("evaluate:\n  value_weights: {clik: 1.0}\n")
    with pytest.raises(
        ConfigError, match=r"bad\.yaml: evaluate: Value error, value_weights: unknown tasks \['clik'\]"
    ):
        load_config(p, TrainConfig)


def test_id_dropout_is_per_id_feature() -> None:
    cfg = load_config(None, TrainConfig, {"optim.id_dropout": 0.2})
    assert cfg.optim.id_dropout == {"sp_viewer": 0.2, "sp_author": 0.2, "sp_post": 0.2}
    assert load_config(REPO / "configs" / "train.yaml", TrainConfig).optim.id_dropout["sp_viewer"] > 0.1
    with pytest.raises(ConfigError, match="unknown id features"):
        load_config(None, TrainConfig, {"optim.id_dropout": {"sp_city": 0.5}})
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        load_config(None, TrainConfig, {"optim.id_dropout": {"sp_viewer": 1.0}})
