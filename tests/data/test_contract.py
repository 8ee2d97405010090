"""Data contracts on every table the foundation writes: schema, nulls, enums, keys, partitions, ranges."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipelines.common import schema
from pipelines.features.manifest import load_manifest
from pipelines.features.manifest import read_split

pytestmark = pytest.mark.ray


def _files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


@pytest.mark.parametrize("name", list(schema.TABLES))
def test_raw_matches_contract(raw_world: Path, name: str) -> None:
    files = _files(raw_world / "raw" / name)
    assert files, f"synth wrote no {name}"
    for f in files:
        assert pq.read_schema(f).remove_metadata().equals(schema.TABLES[name].schema)


@pytest.mark.parametrize("name", list(schema.TABLES))
def test_clean_matches_contract(built_world: Path, name: str) -> None:
    table = schema.TABLES[name]
    files = _files(built_world / "clean" / name)
    assert files
    for f in files:
        assert pq.read_schema(f).remove_metadata().equals(table.schema), f
    data = pads.dataset([str(f) for f in files], format="parquet", schema=table.schema).to_table()
    assert data.num_rows > 0
    for field in table.schema:
        if not field.nullable:
            assert data.column(field.name).null_count == 0, field.name
    keys = data.select(list(table.key)).to_pandas()
    assert not keys.duplicated().any(), f"{name}: duplicate keys in clean"
    if table.time_column is not None:  # each file sits in the folder of its rows' UTC date
        for f in files:
            day = f.parent.name.split("=", 1)[1]
            dates = pc.strftime(pq.read_table(f).column(table.time_column), format="%Y-%m-%d")
            assert set(dates.to_pylist()) == {day}


def test_clean_enums_and_ranges(built_world: Path) -> None:
    def read(name: str) -> pa.Table:
        return pads.dataset(str(built_world / "clean" / name), format="parquet", schema=schema.TABLES[name].schema).to_table()

    users, posts, eng = read("users"), read("posts"), read("engagements")
    assert set(pc.unique(users["gender"]).to_pylist()) <= set(schema.GENDERS)
    assert set(pc.unique(posts["modality"]).to_pylist()) <= set(schema.MODALITIES)
    assert set(pc.unique(posts["visibility"]).to_pylist()) <= set(schema.VISIBILITIES)
    assert set(pc.unique(eng["type"]).to_pylist()) <= set(schema.ENGAGEMENT_TYPES)
    age = users["age"].to_numpy()
    assert age.min() >= schema.MIN_AGE and age.max() <= schema.MAX_AGE
    views = eng.filter(pc.equal(eng["type"], "view"))
    assert views["dwell_ms"].null_count == 0
    assert pc.min(views["dwell_ms"]).as_py() >= 0
    deleted = posts.filter(pc.is_valid(posts["deleted_at"]))
    assert pc.all(pc.greater_equal(deleted["deleted_at"], deleted["created_at"])).as_py()


def test_synthetic_network_is_realistic(built_world: Path) -> None:
    summary = json.loads((built_world / "synth_summary.json").read_text())["rows"]
    assert summary["impressions"] > 1000
    fr = pq.read_table(built_world / "clean" / "friendships")
    deg = np.bincount(np.concatenate([fr["user_a"].to_numpy(), fr["user_b"].to_numpy()]) - 100_000)
    deg = deg[deg > 0]
    assert deg.max() > 2 * np.median(deg), "degrees should be heavy-tailed"
    assert (fr["user_a"].to_numpy() < fr["user_b"].to_numpy()).all()
    eng = pads.dataset(str(built_world / "clean" / "engagements"), format="parquet").to_table(columns=["type"])
    counts = eng["type"].value_counts().to_pylist()
    rate = {c["values"]: c["counts"] for c in counts}
    views = rate["view"]
    assert rate.get("click", 0) / views < 0.15, "most users are passive"
    assert rate.get("comment", 0) < rate.get("like", 0)
    assert rate.get("report", 0) < rate.get("hide", 0) + 1


def test_ingest_accounting_adds_up(built_world: Path) -> None:
    summary = json.loads((built_world / "ingest_summary.json").read_text())
    for name, c in summary["tables"].items():
        assert c["read"] == c["accepted"] + c["quarantined"] + c["duplicates"], name
    assert summary["totals"]["quarantined"] == 0  # synthetic logs are clean


def test_feature_splits_are_time_ordered_and_labelled(built_world: Path) -> None:
    manifest = load_manifest(built_world)
    cols = manifest["columns"]
    ranges = {}
    for split in ("train", "valid", "test"):
        t = read_split(built_world, split)
        assert t.num_rows > 0
        df = t.to_pandas()
        for label in cols["labels"]:
            assert df[label].notna().all()
        for label in ("click", "like", "comment", "share", "hide", "report", "skip"):
            assert set(df[label].unique()) <= {0, 1}
        assert (df["skip"] == (df["dwell_ms"] < manifest["config"]["skip_dwell_ms"])).all()
        dense = df[cols["dense"]].to_numpy()
        assert np.isfinite(dense).all(), f"{split}: non-finite dense features"
        for vec, dim in cols["vectors"].items():
            assert t.schema.field(vec).type.list_size == dim
        ranges[split] = (df["served_at"].min(), df["served_at"].max())
        if split != "train":
            assert (df["sample_weight"] == 1).all()
    assert ranges["train"][1] < ranges["valid"][0] <= ranges["valid"][1] < ranges["test"][0]


def test_sampling_weights_keep_estimates_unbiased(built_world: Path) -> None:
    manifest = load_manifest(built_world)
    train = manifest["splits"]["train"]
    # Weighted row count estimates the logged impressions; weighted positives are exact for kept labels.
    assert abs(train["weight"] - train["impressions"]) / train["impressions"] < 0.1
    df = read_split(built_world, "train").to_pandas()
    assert df["sample_weight"].gt(0).all()
    impressions = df.groupby("impression_id")["sample_weight"].sum()
    assert impressions.max() <= 1.0 / manifest["config"]["negative_keep_rate"] + 1e-6


def test_online_store_has_one_row_per_entity(built_world: Path) -> None:
    online = built_world / "online"
    manifest = json.loads((online / "manifest.json").read_text())
    assert manifest["as_of"]
    users = pq.read_table(online / "users.parquet").to_pandas()
    posts = pq.read_table(online / "posts.parquet").to_pandas()
    pairs = pq.read_table(online / "user_author.parquet").to_pandas()
    assert users["user_id"].is_unique and posts["post_id"].is_unique
    assert not pairs[["viewer_id", "author_id"]].duplicated().any()
    assert {"u_actions_7d", "a_posts_7d", "u_topic_share", "u_modality_share"} <= set(users.columns)
    assert {"p_like_7d", "p_text_emb", "p_media", "visibility", "deleted_at"} <= set(posts.columns)
    assert {"ua_action_rate", "rel_classmates"} <= set(pairs.columns)
    for name in ("friendships", "blocks", "recent_actions"):
        assert (online / f"{name}.parquet").exists()


def test_online_viewer_events_are_the_last_week_of_impressions_and_hides(built_world: Path) -> None:
    import datetime as dt

    online = built_world / "online"
    as_of = dt.datetime.fromisoformat(json.loads((online / "manifest.json").read_text())["as_of"])
    events = pq.read_table(online / "viewer_events.parquet").to_pandas()
    assert set(events["type"]) <= {"impression", "hide", "report"}
    assert (events["type"] == "impression").any() and (events["type"] != "impression").any()
    assert events["at"].lt(as_of).all() and events["at"].ge(as_of - dt.timedelta(days=7)).all()
    clean = pq.read_table(built_world / "clean" / "engagements").to_pandas()
    hides = clean[clean["type"].isin(["hide", "report"]) & clean["at"].ge(as_of - dt.timedelta(days=7))]
    assert len(events[events["type"] != "impression"]) == len(hides)


def test_school_and_work_reach_the_ranker_as_vocabulary_codes(built_world: Path) -> None:
    """The viewer's school and work are sparse features (issue 16: a ratings log's occupation lives in
    ``work``): one code per distinct value in ``vocab.json``, 0 for unknown, the same in the online store."""
    manifest = load_manifest(built_world)
    vocab = json.loads((built_world / "features" / "vocab.json").read_text())
    users = pads.dataset(str(built_world / "clean" / "users"), format="parquet").to_table().to_pandas()
    rows = read_split(built_world, "test", ["viewer_id", "sp_school", "sp_work"]).to_pandas()
    profile = users.set_index("user_id").loc[rows["viewer_id"]]
    for column, feature in (("school", "sp_school"), ("work", "sp_work")):
        assert manifest["columns"]["sparse_vocab"][feature] == len(vocab[column]) + 1
        want = [vocab[column].get(v, 0) if isinstance(v, str) else 0 for v in profile[column]]
        assert rows[feature].tolist() == want
        assert (rows[feature] > 0).any()
    online = pq.read_table(built_world / "online" / "users.parquet").to_pandas().set_index("user_id")
    want_online = [vocab["work"].get(v, 0) if isinstance(v, str) else 0 for v in online["work"]]
    assert online["work_code"].tolist() == want_online
