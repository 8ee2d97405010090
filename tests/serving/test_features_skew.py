"""Train/serve skew: the feature rows serving assembles from an online snapshot taken at time ``T`` equal
the training rows of impressions served at ``T`` (built by pipelines.features.build_rows)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipelines.common import schema
from pipelines.common.config import FeaturesConfig
from pipelines.features.online import build_online
from pipelines.features.rows import build_rows, load_clean, make_catalog, make_vocab
from pipelines.features.stage import index_history
from serve.features import assemble, viewer_columns
from serve.store import EmbeddedStore

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def snapshot_at_t(built_world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tables = load_clean(built_world / "clean")
    vocab = make_vocab(tables["users"], tables["posts"])
    h = index_history(tables, vocab)
    emb = pq.read_table(built_world / "features" / "post_embeddings.parquet")
    order = np.argsort(emb["post_id"].to_numpy())
    text_emb = np.stack(emb["text_emb"].to_numpy(zero_copy_only=False))[order].astype(np.float32)
    cat = make_catalog(tables["users"], tables["posts"], vocab, text_emb)
    cfg = FeaturesConfig.model_validate(
        json.loads((built_world / "features" / "manifest.json").read_text())["config"]
    )
    # T: the middle of the last day's impressions (history before it, the rest of the day after it).
    served = pc.cast(tables["impressions"]["served_at"], pa.int64()).to_numpy() // 1000
    t_abs = int(np.quantile(served, 0.9))
    d = tmp_path_factory.mktemp("snapshot-at-t")
    build_online(h, cat, tables, t_abs - h.t0, cfg, d / "online")
    (d / "online" / "manifest.json").write_text(
        json.dumps(
            {
                "as_of": dt.datetime.fromtimestamp(t_abs, dt.UTC).isoformat(),
                "windows": cfg.windows,
                "features_dir": str(d / "features"),
            }
        )
    )
    (d / "features").mkdir()
    (d / "features" / "vocab.json").write_text(json.dumps(vocab))
    return {"dir": d, "t": t_abs, "h": h, "cat": cat, "tables": tables, "cfg": cfg}


def test_serving_rows_equal_training_rows_at_the_snapshot_time(
    snapshot_at_t: dict, built_world: Path
) -> None:
    s = snapshot_at_t
    store = EmbeddedStore.load(s["dir"])
    # Pairs: each viewer with posts they were shown on the last day (friends' posts, with history).
    imps = s["tables"]["impressions"]
    served = pc.cast(imps["served_at"], pa.int64()).to_numpy() // 1000
    last_day = imps.filter(pa.array(served >= s["t"] - 86400))
    viewers = np.unique(last_day["viewer_id"].to_numpy())[:25]
    n = 0
    manifest = json.loads((built_world / "features" / "manifest.json").read_text())
    columns = [
        *[c for c in manifest["columns"]["dense"] if c != "ctx_position"],
        *manifest["columns"]["vectors"],
        *manifest["columns"]["sparse_ids"],
        *manifest["columns"]["sparse_vocab"],
    ]
    for v in viewers:
        posts = np.unique(last_day.filter(pc.equal(last_day["viewer_id"], v))["post_id"].to_numpy())[:40]
        at_t = pa.table(
            {
                "impression_id": pa.array([f"q{v}-{p}" for p in posts]),
                "request_id": pa.array([f"r{v}"] * len(posts)),
                "viewer_id": pa.array(np.full(len(posts), v, np.int64)),
                "post_id": pa.array(posts),
                "served_at": pa.array(np.full(len(posts), s["t"] * 1000, np.int64)).cast(schema.TS),
                "position": pa.array(np.zeros(len(posts), np.int32)),
            },
            schema=schema.IMPRESSIONS,
        )
        want, vectors = build_rows(s["h"], s["cat"], at_t, schema.ENGAGEMENTS.empty_table(), s["cfg"])
        got = assemble(store, int(v), posts, float(s["t"]))
        for c in columns:
            expected = vectors[c] if c in vectors else want[c].to_numpy()
            np.testing.assert_allclose(
                np.asarray(got[c], np.float64), np.asarray(expected, np.float64), atol=2e-4, err_msg=c
            )
        # The viewer's own columns (the viewer tower's input, computed without any post) are the same.
        own = viewer_columns(store, int(v), float(s["t"]))
        assert {c for c in columns if c.startswith("u_")} <= set(own)
        for c in set(own) & set(columns):
            expected = vectors[c] if c in vectors else want[c].to_numpy()
            np.testing.assert_allclose(
                np.repeat(own[c], len(posts), axis=0).astype(np.float64),
                np.asarray(expected, np.float64),
                atol=2e-4,
                err_msg=f"viewer_columns: {c}",
            )
        got_topics = [sorted(x) for x in got["sp_topics"].rows()]
        assert got_topics == [sorted(x) for x in want["sp_topics"]]
        n += len(posts)
    assert n > 100
