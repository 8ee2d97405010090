"""configs/serve.yaml is a valid Ray Serve config file for this app: what `serve run` / `serve deploy`
import exists with the signature Serve requires, and the app's args validate."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipelines.common.config import ConfigError
from serve.config import load_serve_yaml, parse

REPO = Path(__file__).resolve().parents[2]


def test_serve_yaml_points_at_a_one_argument_builder_and_its_args_validate() -> None:
    doc, cfg = load_serve_yaml(REPO / "configs" / "serve.yaml")
    app = doc["applications"][0]
    module, name = app["import_path"].split(":")
    builder = getattr(importlib.import_module(module), name)
    assert len(inspect.signature(builder).parameters) == 1  # Serve passes the args dict, nothing else
    assert cfg.ranking.placement == "ingress"
    names = {d["name"] for d in app["deployments"]}
    assert names == {"FeedIngress"}  # a deployment the app does not create is a deploy error


def test_a_wrong_key_in_the_app_args_names_it() -> None:
    with pytest.raises(ConfigError, match=r"retrieval\.windowdays"):
        parse({"retrieval": {"windowdays": 3}})
    with pytest.raises(ConfigError, match="challenger_traffic"):
        parse({"model": {"challenger_traffic": 1.5}})
    with pytest.raises(ConfigError, match="value_weights"):
        parse({"feed": {"value_weights": {"clicks": 1.0}}})


def test_every_rerank_policy_is_configurable_from_yaml() -> None:
    doc = yaml.safe_load((REPO / "configs" / "serve.yaml").read_text())
    rerank = doc["applications"][0]["args"]["rerank"]
    assert set(rerank) == {"freshness", "fatigue", "seen", "dedup", "diversity", "exploration", "suggested"}


def test_arm_shares_are_stable_and_add_up() -> None:
    from serve.ranking import arm_of

    arms = [arm_of(u, 0.2, 0.3) for u in range(4000)]
    assert arms == [arm_of(u, 0.2, 0.3) for u in range(4000)]  # stable per user
    share = {a: arms.count(a) / len(arms) for a in set(arms)}
    assert abs(share["challenger"] - 0.2) < 0.03
    assert abs(share["chronological"] - 0.3) < 0.03
    # Moving traffic into the holdout never moves a challenger user elsewhere.
    assert all(arm_of(u, 0.2, 0.5) == "challenger" for u in range(4000) if arms[u] == "challenger")
    with pytest.raises(ConfigError, match="at most 1"):
        parse({"model": {"challenger_traffic": 0.6, "chronological_traffic": 0.5}})


def test_the_retrieval_holdout_splits_users_apart_from_the_model_arms() -> None:
    from serve.ranking import arm_of, retrieval_arm_of

    users = range(8000)
    holdout = np.array([retrieval_arm_of(u, 0.5) == "friends_only" for u in users])
    assert abs(holdout.mean() - 0.5) < 0.02
    # Pinned: a user's arm must not move between releases (a changed salt or hash would reshuffle a
    # running experiment).
    assert [retrieval_arm_of(u, 0.5) == "friends_only" for u in range(6)] == [0, 1, 1, 1, 1, 0]
    # A larger holdout only adds users to it.
    assert all(retrieval_arm_of(u, 0.6) == "friends_only" for u in users if holdout[u])
    assert all(retrieval_arm_of(u, 0.0) == "suggestions" for u in users)
    # Independent of the model experiment: the holdout is half of the chronological arm too.
    chrono = np.array([arm_of(u, 0.0, 0.5) == "chronological" for u in users])
    assert abs(holdout[chrono].mean() - 0.5) < 0.03
