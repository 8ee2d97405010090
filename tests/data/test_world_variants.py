"""The world variant without a social graph and with cold-start users (configs/data-nograph.yaml): no
friendships, every post public, candidates from anyone, and new users seen on the last day only."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.common.config import DataConfig, load_config
from pipelines.synth.world import STRANGER_TIE, build_world, generate_chunk
from tests.conftest import REPO, TINY


def open_config() -> DataConfig:
    overrides = {**TINY, "synth.social_graph": False, "synth.cold_start_share": 0.5}
    return load_config(REPO / "configs" / "data.yaml", DataConfig, overrides)


def test_config_file_describes_the_variant() -> None:
    cfg = load_config(REPO / "configs" / "data-nograph.yaml", DataConfig).synth
    assert not cfg.social_graph
    assert cfg.cold_start_share >= 0.5


def test_no_graph_world_is_public_and_cold_users_arrive_on_the_last_day(tmp_path: Path) -> None:
    cfg = open_config().synth
    world, tables = build_world(cfg)
    assert tables["friendships"].num_rows == 0
    assert tables["blocks"].num_rows == 0
    assert set(tables["posts"]["visibility"].to_pylist()) == {"public"}
    cold_ids = set(world.user_ids[world.cold].tolist())
    assert 0.3 < len(cold_ids) / cfg.users < 0.7
    authors = set(tables["posts"]["author_id"].to_pylist())
    assert not authors & cold_ids  # new users have not posted yet
    generate_chunk(world, cfg, 0, 0, cfg.users, str(tmp_path))
    imps = pq.read_table(tmp_path / "raw" / "impressions")
    last_day = cfg.start_date + dt.timedelta(days=cfg.days - 1)
    day = pc.cast(imps["served_at"], "date32").to_numpy(zero_copy_only=False)
    viewers = imps["viewer_id"].to_numpy()
    cold = np.isin(viewers, list(cold_ids))
    assert cold.any()
    assert (day[cold] == np.datetime64(last_day)).all()
    posts = tables["posts"]
    author_of = dict(zip(posts["post_id"].to_pylist(), posts["author_id"].to_pylist(), strict=True))
    assert all(author_of[p] != v for p, v in zip(imps["post_id"].to_pylist(), viewers.tolist(), strict=True))
    truth = pq.read_table(tmp_path / "truth")
    assert truth.num_rows == imps.num_rows
    assert STRANGER_TIE > 0


def test_logging_policy_explores_public_posts_of_non_friends(tmp_path: Path) -> None:
    """With a social graph, about ``explore_share`` of impressions are out-of-network: public, by a
    non-friend, never blocked either way, never the viewer's own, never deleted or future at serving."""
    cfg = load_config(REPO / "configs" / "data.yaml", DataConfig, {**TINY, "synth.explore_share": 0.2}).synth
    world, tables = build_world(cfg)
    generate_chunk(world, cfg, 0, 0, cfg.users, str(tmp_path))
    imps = pq.read_table(tmp_path / "raw" / "impressions").to_pylist()
    posts = {p["post_id"]: p for p in tables["posts"].to_pylist()}
    friends = {(f["user_a"], f["user_b"]) for f in tables["friendships"].to_pylist()}
    friends |= {(b, a) for a, b in friends}
    blocks = {(b["blocker_id"], b["blocked_id"]) for b in tables["blocks"].to_pylist()}
    blocks |= {(b, a) for a, b in blocks}
    out = [i for i in imps if (i["viewer_id"], posts[i["post_id"]]["author_id"]) not in friends]
    assert 0.1 < len(out) / len(imps) < 0.3
    for i in out:
        post = posts[i["post_id"]]
        assert post["visibility"] == "public"
        assert post["author_id"] != i["viewer_id"]
        assert (i["viewer_id"], post["author_id"]) not in blocks
        assert post["created_at"] < i["served_at"]
        assert post["deleted_at"] is None or post["deleted_at"] > i["served_at"]
    last: dict[str, int] = {}
    for i in imps:
        last[i["request_id"]] = max(last.get(i["request_id"], 0), i["position"])
    # Placed at random positions: many strangers' posts come before their session's last slot.
    assert sum(i["position"] < last[i["request_id"]] for i in out) > len(out) / 3
    shown = [(i["viewer_id"], i["post_id"]) for i in imps]
    assert len(shown) == len(set(shown))  # never shown twice
