"""The new-viewer features training substitutes for a share of rows (``optim.history_dropout``) are what a
real viewer without history gets, and they cover every viewer-history input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.features import pit
from pipelines.features.manifest import load_manifest
from pipelines.features.rows import load_clean, make_vocab
from pipelines.features.stage import index_history

pytestmark = pytest.mark.ray

#: Viewer columns that are profile, not history: a new user has them from sign-up.
PROFILE = {"u_age", "u_friends"}


def test_cold_viewer_covers_every_viewer_history_input(built_world: Path) -> None:
    manifest = load_manifest(built_world)
    cold = manifest["cold_viewer"]
    inputs = [*manifest["columns"]["dense"], *manifest["columns"]["vectors"]]
    history = {c for c in inputs if c.startswith(("u_", "ua_", "x_")) and c not in PROFILE}
    assert history and history <= set(cold), sorted(history - set(cold))


def test_a_real_viewer_before_any_event_has_the_cold_values(built_world: Path) -> None:
    tables = load_clean(built_world / "clean")
    h = index_history(tables, make_vocab(tables["users"], tables["posts"]))
    cold = load_manifest(built_world)["cold_viewer"]
    # Users asked about just after they joined, before any impression, view or action of theirs.
    users = np.arange(len(h.users))
    t = h.user_joined[users] + 1
    quiet = (h.imps_by_viewer.count(users, t) == 0) & (h.views_by_viewer.count(users, t) == 0)
    users, t = users[quiet], t[quiet]
    assert len(users) >= 10
    got = pit.user_features(h, users, t, 7 * 86400)
    pair = pit.pair_features(h, users, np.roll(users, 1), t)
    for name, value in cold.items():
        if name in got and name != "u_tenure_days":
            np.testing.assert_allclose(got[name], np.broadcast_to(value, got[name].shape), rtol=1e-6, err_msg=name)
        elif name in pair:
            np.testing.assert_allclose(pair[name], value, rtol=1e-6, err_msg=name)
    assert np.all(got["u_tenure_days"] < 0.01)
    assert cold["x_topic_lift"] == 0.0 and cold["x_topic_dwell"] == 0.0
