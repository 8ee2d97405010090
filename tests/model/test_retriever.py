"""The two-tower retriever: its loss, that it learns interest matching, its payload, what each tower reads
from the features, and the stage end to end (Ray Train + TorchRec, recall, MLflow registration)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.batch import FeatureLayout, SparseEncoder, collate
from models.retriever import (
    RetrieverBatch,
    RetrieverSpec,
    RetrieverTrainWrapper,
    ServableRetriever,
    TwoTowerRetriever,
    in_batch_softmax,
)
from pipelines.common.config import RetrieverConfig, load_config
from pipelines.retrieval.post_index import eligible_posts
from serve.index import PostIndex, RetrieverSlot
from serve.store import EmbeddedStore
from tests.conftest import REPO


def test_duplicates_are_not_negatives_and_logq_lowers_popular_posts() -> None:
    u = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    p = u.clone()
    p[3] = p[1]  # rows 1 and 3 engaged with the same post
    keys = torch.tensor([10, 11, 12, 11])
    masked = in_batch_softmax(u, p, torch.zeros(4), keys, 0.1)
    unmasked = in_batch_softmax(u, p, torch.zeros(4), torch.arange(4), 0.1)
    assert masked[1] < unmasked[1]
    assert masked[3] < unmasked[3]
    assert torch.allclose(masked[[0, 2]], unmasked[[0, 2]])
    # A popular post (high q) is a negative more often than its share of the corpus: the correction
    # subtracts log q from its logit, so as a positive it is pushed less (higher loss for its own row).
    logq = torch.tensor([np.log(0.5), np.log(0.01), np.log(0.01), np.log(0.01)], dtype=torch.float32)
    corrected = in_batch_softmax(u, p, logq, torch.arange(4), 0.1)
    assert corrected[0] > unmasked[0]


def _interest_world(rng: np.random.Generator, n: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Viewers with a topic-share vector; each engages with a post of its most likely topic."""
    topics = 8
    share = rng.dirichlet(np.full(topics, 0.3), n).astype(np.float32)
    chosen = np.array([rng.choice(topics, p=s) for s in share])
    noise = rng.normal(0, 0.3, (n, topics)).astype(np.float32)
    media = np.eye(topics, dtype=np.float32)[chosen] + noise
    return {"u_topic_share": share}, {"p_media": media, "sp_modality": rng.integers(1, 4, n)}


def test_two_towers_learn_to_match_viewers_to_posts() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    viewer = FeatureLayout(dense=(), vectors={"u_topic_share": 8}, sparse=())
    post = FeatureLayout(dense=(), vectors={"p_media": 8}, sparse=("sp_modality",))
    enc = SparseEncoder(codes={"sp_modality": 4})
    spec = RetrieverSpec(
        sparse={"sp_modality": 4},
        viewer_dense=8,
        post_dense=8,
        viewer_sparse=(),
        post_sparse=("sp_modality",),
        embedding_dim=4,
        tower_mlp=(32,),
        out_dim=8,
        temperature=0.1,
    )
    model = TwoTowerRetriever(spec)
    wrapper = RetrieverTrainWrapper(model)
    opt = torch.optim.Adam(wrapper.parameters(), lr=0.01)
    both = FeatureLayout(dense=(), vectors={}, sparse=("sp_modality",))

    def recall_at_10() -> float:
        v, p = _interest_world(np.random.default_rng(99), 500)
        r = ServableRetriever(model, viewer, post, enc)
        scores = r.embed_viewers(v) @ r.embed_posts(p).T
        own = np.diag(scores)
        return float(((scores > own[:, None]).sum(1) < 10).mean())

    before = recall_at_10()
    model.train()
    for _ in range(150):
        v, p = _interest_world(rng, 128)
        b = collate({**v, **p}, both, enc)
        dense = torch.cat([torch.from_numpy(v["u_topic_share"]), torch.from_numpy(p["p_media"])], dim=1)
        batch = RetrieverBatch(dense, b.sparse, torch.zeros(128), torch.arange(128), torch.ones(128))
        loss, _ = wrapper(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = recall_at_10()
    # Chance is 10 / 500 = 0.02; ~62 posts share each topic, so knowing the topic alone gives ~0.1.
    assert after > 0.06 > before


def test_payload_round_trip_embeds_the_same() -> None:
    viewer = FeatureLayout(dense=("u_age",), vectors={"u_topic_share": 3}, sparse=("sp_city",))
    post = FeatureLayout(dense=("p_text_len",), vectors={}, sparse=("sp_topics",))
    enc = SparseEncoder(codes={"sp_city": 5, "sp_topics": 6})
    spec = RetrieverSpec(
        sparse=enc.table_rows(),
        viewer_dense=4,
        post_dense=1,
        viewer_sparse=("sp_city",),
        post_sparse=("sp_topics",),
        embedding_dim=4,
        tower_mlp=(8,),
        out_dim=5,
    )
    r = ServableRetriever(TwoTowerRetriever(spec), viewer, post, enc)
    again = ServableRetriever.from_payload(r.to_payload())
    v = {"u_age": np.array([20.0, 50.0]), "u_topic_share": np.ones((2, 3)) / 3, "sp_city": np.array([1, 99])}
    topics = np.empty(3, dtype=object)
    topics[:] = [np.array([1, 2]), np.array([], np.int64), np.array([5])]
    p = {"p_text_len": np.array([10.0, 0.0, 3.0]), "sp_topics": topics}
    assert np.allclose(r.embed_viewers(v), again.embed_viewers(v))
    assert np.allclose(r.embed_posts(p), again.embed_posts(p, batch_size=2))  # batching changes nothing
    with pytest.raises(ValueError, match="not a retriever payload"):
        ServableRetriever.from_payload({**r.to_payload(), "kind": "ranker"})


def test_towers_read_what_serving_has(built_world: Path) -> None:
    """The post tower sees content and author features only (no id, no engagement counter, no age), the
    viewer tower only the viewer's, the prior only the post's state, the training-only context tower the
    relation and the slot; a pointwise block keeps every row, a softmax block the engaged ones."""
    from pipelines.features.manifest import read_split
    from pipelines.retrieval.setup import LABEL, LOGQ, RetrieverTraining, build_setup

    cfg = load_config(REPO / "configs" / "retriever.yaml", RetrieverConfig)
    assert cfg == RetrieverConfig()  # the embedded defaults are the file's
    setup = build_setup(built_world, cfg)
    post = [*setup.post.dense, *setup.post.vectors, *setup.post.sparse]
    assert "p_text_emb" in post
    assert "sp_topics" in post
    assert not [
        c for c in post if c in ("sp_post", "sp_author") or c.startswith(("p_click", "p_impr", "p_age"))
    ]
    viewer = [*setup.viewer.dense, *setup.viewer.vectors, *setup.viewer.sparse]
    assert all(c.startswith(("u_", "sp_")) for c in viewer)
    assert setup.prior is not None
    assert "p_age_h" in setup.prior.dense
    assert all(c.startswith("p_") and "friend" not in c for c in setup.prior.dense)
    assert setup.context is not None
    assert "ctx_position" in setup.context.dense
    assert "rel_friend" in setup.context.dense
    # Serving assembles every column each part reads, at the width training saw.
    from serve.index import tower_columns
    from serve.store import EmbeddedStore

    store = EmbeddedStore.load(built_world)
    posts = store.recent_posts(store.as_of_s - 7 * 86400, store.as_of_s)[:5]
    served = tower_columns(store, int(store.user_ids()[0]), posts, store.as_of_s)
    assert setup.prior is not None
    for lay in (setup.viewer, setup.post, setup.prior):  # the context tower is training-only
        for c in lay.dense:
            assert np.asarray(served[c]).shape == (len(posts),), c
        for c, width in lay.vectors.items():
            assert np.asarray(served[c]).shape == (len(posts), width), c
        for c in lay.sparse:
            assert len(served[c]) == len(posts), c
    table = read_split(built_world, "train", setup.columns)
    engaged = sum(
        1
        for r in table.select([*setup.positives, "hide", "report"]).to_pylist()
        if any(r[a] for a in setup.positives) and not (r["hide"] or r["report"])
    )
    block = RetrieverTraining(setup).prepare_block(table)
    assert block.num_rows == table.num_rows
    assert sum(block[LABEL].to_pylist()) == engaged > 0
    softmax = build_setup(built_world, RetrieverConfig.model_validate({"model": {"loss": "softmax"}}))
    assert softmax.context is None
    block = RetrieverTraining(softmax).prepare_block(table)
    assert block.num_rows == engaged
    assert max(block[LOGQ].to_pylist()) < 10


def test_retriever_stage_trains_registers_and_beats_random(built_world: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from pipelines.common import tracking
    from pipelines.promote.stage import run_retriever
    from pipelines.retrieval.stage import run

    d = tmp_path / "d"
    shutil.copytree(built_world / "features", d / "features")
    shutil.copytree(built_world / "online", d / "online")
    cfg = load_config(
        REPO / "configs" / "retriever.yaml",
        RetrieverConfig,
        {
            "optim.epochs": 2,
            "optim.batch_size": 64,
            "optim.report_every": 4,
            "experiment": "test-retriever",
            "evaluate.ks": [10, 50, 200],
            "registry.gate_k": 50,
        },
    )
    before = tracking.tracking_uri(d)
    with tracking.pointed_at(before):
        published = run(cfg, d)
        r = published.recall
        assert r.queries > 0
        assert r.corpus > 50
        assert r.recall["random"][50] == pytest.approx(50 / r.corpus, abs=0.1)
        assert r.recall["retriever"][50] > r.recall["random"][50]
        version = MlflowClient().get_model_version_by_alias("feed-retriever", tracking.CHALLENGER)
        assert str(version.version) == published.version
        # Its post vectors (a Ray Data job): every eligible post, equal to what a replica's post tower
        # computes; a replica serving the version runs none of them through the tower again.
        vectors = tracking.load_post_index("feed-retriever", published.version)
        store = EmbeddedStore.load(d)
        eligible = eligible_posts(store, cfg.post_index.days).tolist()
        assert vectors is not None
        assert len(eligible) > 20
        assert set(vectors[0].tolist()) == set(eligible)
        assert version.tags["post_index.posts"] == str(len(eligible))
        window = cfg.post_index.days * 86400
        slot = RetrieverSlot("feed-retriever", tracking.CHALLENGER, window, "flat", d)
        slot.refresh(store, store.as_of_s)
        assert slot.current is not None
        assert sorted(slot.current.entries.ids.tolist()) == sorted(eligible)
        assert slot.current.embedded == 0
        here = PostIndex(slot.current.retriever, "here", window)
        here.catch_up(store, store.as_of_s)
        assert here.embedded == len(eligible)
        rows = [here.entries.rows[p] for p in eligible]
        logged = vectors[1][np.searchsorted(vectors[0], eligible)]
        assert np.allclose(here.entries.vectors[rows], logged, atol=1e-4)
        served = tracking.load_retriever_version(f"models:/feed-retriever/{published.version}")
        local = ServableRetriever.load(published.checkpoint / tracking.MODEL_FILE)
        v = {c: np.ones(2) for c in local.viewer_layout.dense}
        v |= {c: np.ones((2, n)) / n for c, n in local.viewer_layout.vectors.items()}
        v |= {c: np.array([1, 2]) for c in local.viewer_layout.sparse}
        assert np.allclose(served.embed_viewers(v), local.embed_viewers(v))
        # Promotion: the first version becomes champion; a second is gated by recall on the same split.
        first = run_retriever(d, cfg)
        assert first.promoted
        assert first.reason == "first champion"
        assert not run_retriever(d, cfg, version=published.version).promoted  # already champion
        again = run(cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"seed": 1})}), d)
        decision = run_retriever(d, cfg)
        assert decision.candidate == again.version
        assert "recall@50" in decision.reason
        champion = MlflowClient().get_model_version_by_alias("feed-retriever", tracking.CHAMPION)
        assert str(champion.version) == (again.version if decision.promoted else published.version)
