"""Model behaviour on tiny synthetic inputs: shapes, cold start, and that training actually learns."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import torch

from models.batch import FeatureLayout, Forget, SparseEncoder, collate
from models.ranker import TASKS, MultiTaskRanker, RankerSpec, probabilities
from models.train_wrapper import LossSpec, RankerTrainWrapper

LAYOUT = FeatureLayout(dense=("x0", "x1"), vectors={"v": 3}, sparse=("sp_viewer", "sp_post", "sp_topics"))


def _columns(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A learnable toy: click iff x0 > 0 or the viewer is one of the 'clicky' ids."""
    x0 = rng.normal(size=n)
    viewer = rng.integers(1, 40, size=n)
    click = ((x0 > 0) | (viewer % 5 == 0)).astype(np.float32)
    topics = np.empty(n, dtype=object)
    topics[:] = [rng.integers(1, 6, size=rng.integers(0, 3)) for _ in range(n)]
    cols: dict[str, np.ndarray] = {
        "x0": x0,
        "x1": rng.normal(size=n),
        "v": rng.normal(size=(n, 3)),
        "sp_viewer": viewer,
        "sp_post": rng.integers(100, 200, size=n),
        "sp_topics": topics,
        "dwell_ms": np.where(click > 0, 8000.0, 1500.0),
        "sample_weight": np.ones(n),
    }
    for t in TASKS:
        if t != "dwell":
            cols[t] = click if t in ("click", "like") else np.zeros(n, np.float32)
    cols["skip"] = (cols["dwell_ms"] < 2000).astype(np.float32)
    return cols


ENCODER = SparseEncoder(
    ids={"sp_viewer": np.arange(1, 40), "sp_post": np.arange(100, 200)}, codes={"sp_topics": 6}
)


def _spec(**overrides: Any) -> RankerSpec:
    shapes: dict[str, Any] = {"embedding_dim": 4, "bottom_mlp": (8,), "top_mlp": (8,)}
    return RankerSpec(sparse=ENCODER.table_rows(), n_dense=LAYOUT.n_dense, **(shapes | overrides))


@pytest.mark.parametrize("interaction", ["dot", "dcn"])
def test_forward_shapes(interaction: Literal["dot", "dcn"]) -> None:
    spec = _spec(top_mlp=(16, 8), interaction=interaction)
    batch = collate(_columns(5, np.random.default_rng(0)), LAYOUT, ENCODER)
    out = MultiTaskRanker(spec)(batch.dense, batch.sparse)
    assert set(out) == set(TASKS)
    assert all(v.shape == (5,) for v in out.values())
    probs = probabilities(out)
    assert all(((p >= 0) & (p <= 1)).all() for t, p in probs.items() if t != "dwell")
    assert (probs["dwell"] >= 0).all()


def test_unknown_ids_go_to_the_oov_row_and_still_score() -> None:
    cols = _columns(3, np.random.default_rng(1))
    cols["sp_viewer"] = np.array([999, 1, 5])
    cols["sp_post"] = np.array([1, 2, 150])
    batch = collate(cols, LAYOUT, ENCODER)
    assert batch.sparse["sp_viewer"].values().tolist()[0] == 0
    assert batch.sparse["sp_post"].values().tolist()[:2] == [0, 0]
    spec = _spec()
    out = MultiTaskRanker(spec)(batch.dense, batch.sparse)
    assert torch.isfinite(out["click"]).all()


def test_id_dropout_only_touches_id_features() -> None:
    cols = _columns(200, np.random.default_rng(2))
    batch = collate(cols, LAYOUT, ENCODER, id_dropout=1.0, rng=np.random.default_rng(0))
    assert batch.sparse["sp_viewer"].values().eq(0).all()
    assert batch.sparse["sp_topics"].values().gt(0).all()


def test_id_dropout_per_feature_drops_only_the_named_ids() -> None:
    cols = _columns(2000, np.random.default_rng(2))
    kept = collate(cols, LAYOUT, ENCODER).sparse
    batch = collate(cols, LAYOUT, ENCODER, id_dropout={"sp_viewer": 0.5}, rng=np.random.default_rng(0))
    dropped = (batch.sparse["sp_viewer"].values() == 0) & (kept["sp_viewer"].values() != 0)
    assert 0.4 < float(dropped.float().mean()) < 0.6
    assert batch.sparse["sp_post"].values().tolist() == kept["sp_post"].values().tolist()


@pytest.mark.parametrize("learned", [False, True])
def test_training_learns_the_toy_problem(learned: bool) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(3)
    spec = _spec(embedding_dim=8, bottom_mlp=(16,), top_mlp=(32, 16))
    wrapper = RankerTrainWrapper(MultiTaskRanker(spec), LossSpec(learned_weights=learned))
    opt = torch.optim.Adam(wrapper.parameters(), lr=0.01)
    valid = collate(_columns(500, np.random.default_rng(99)), LAYOUT, ENCODER)
    with torch.no_grad():
        first, _ = wrapper(valid)
    for _ in range(150):
        b = collate(_columns(128, rng), LAYOUT, ENCODER)
        loss, (losses, _) = wrapper(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert {"loss/click", "loss/dwell", "loss/total"} <= set(losses)
    with torch.no_grad():
        last, (_, out) = wrapper(valid)
    assert last < first
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(valid.labels["click"].numpy(), out["click"].numpy())
    assert auc > 0.9


def test_sample_weights_change_the_loss() -> None:
    spec = _spec()
    wrapper = RankerTrainWrapper(MultiTaskRanker(spec), LossSpec())
    b = collate(_columns(64, np.random.default_rng(4)), LAYOUT, ENCODER)
    base, _ = wrapper(b)
    w = b.weights.clone()
    w[b.labels["click"] > 0] = 5.0
    weighted, _ = wrapper(dataclasses.replace(b, weights=w))
    assert not torch.isclose(base, weighted)


@pytest.mark.parametrize("learned", [False, True])
def test_skipped_tasks_teach_nothing(learned: bool) -> None:
    """A task the data cannot teach (no positives; skip and dwell without logged dwell) gets no gradient."""
    torch.manual_seed(0)
    model = MultiTaskRanker(_spec())
    wrapper = RankerTrainWrapper(model, LossSpec(learned_weights=learned, skipped=("share", "dwell")))
    b = collate(_columns(64, np.random.default_rng(5)), LAYOUT, ENCODER)
    loss, (losses, _) = wrapper(b)
    loss.backward()
    for task in ("share", "dwell"):
        assert all(p.grad is None or not p.grad.any() for p in model.heads[task].parameters()), task
        assert losses[f"loss/{task}"] > 0  # still measured, just not learned from
    assert any(p.grad is not None and p.grad.any() for p in model.heads["click"].parameters())
    assert "active" not in wrapper.state_dict()  # checkpoints are the same with or without skipped tasks


def test_unlearnable_tasks_come_from_the_manifest() -> None:
    from pipelines.train.setup import unlearnable_tasks

    positives = {"click": 3.0, "like": 2.0, "comment": 0.0, "share": 1.0, "hide": 0.0, "skip": 10.0}
    manifest = {"splits": {"train": {"positives": positives}}}
    assert unlearnable_tasks(manifest) == ("comment", "hide")
    assert unlearnable_tasks({**manifest, "dwell_logged": False}) == ("comment", "hide", "skip", "dwell")


def test_position_bias_is_a_uniform_shift_left_out_at_serving() -> None:
    """The logged position enters only through the shallow bias tower: per task it adds the same amount to
    every item at a given position, so serving without it (bias=None) cannot reorder items by position,
    and serving without it is scoring at the top slot."""
    rng = np.random.default_rng(3)
    layout = FeatureLayout(dense=LAYOUT.dense, vectors=LAYOUT.vectors, sparse=LAYOUT.sparse, bias=("pos",))
    cols = _columns(16, rng)
    cols["pos"] = np.log1p(np.arange(16, dtype=np.float32))
    model = MultiTaskRanker(_spec(n_bias=1)).eval()
    b = collate(cols, layout, ENCODER)
    assert b.bias is not None
    assert b.bias.shape == (16, 1)
    with torch.no_grad():
        served = model(b.dense, b.sparse)
        logged = model(b.dense, b.sparse, b.bias)
        tower = model.bias_tower
        assert tower is not None
        shift = tower(b.bias)
    for i, task in enumerate(TASKS):
        torch.testing.assert_close(logged[task] - served[task], shift[:, i])
        # No intercept: the top slot (log1p(0) = 0) scores exactly as served.
        torch.testing.assert_close(logged[task][0], served[task][0])
    served_cols = {k: v for k, v in cols.items() if k != "pos"}  # serving has no position column
    assert collate(served_cols, layout, ENCODER).bias is None


def test_heads_start_at_the_train_split_base_rates(built_world: Path) -> None:
    from pipelines.common.config import TrainConfig
    from pipelines.features.manifest import read_split
    from pipelines.train.setup import build_setup

    setup = build_setup(built_world, TrainConfig())
    train = read_split(built_world, "train", ["click", "hide", "sample_weight"])
    w = train["sample_weight"].to_numpy()
    for task in ("click", "hide"):
        assert setup.base_rates[task] == pytest.approx(float(np.average(train[task].to_numpy(), weights=w)))
    model = MultiTaskRanker(setup.spec)
    model.init_heads(setup.base_rates)
    head = model.heads["click"]
    assert isinstance(head, torch.nn.Linear)
    assert float(torch.sigmoid(head.bias)) == pytest.approx(setup.base_rates["click"], rel=1e-4)


def test_post_ids_get_rows_only_from_the_minimum_count_and_new_posts_share_the_oov_row(
    built_world: Path,
) -> None:
    """Post-id embeddings for a log whose items recur (issue 16): switched on by leaving ``sp_post`` out of
    ``model.exclude_sparse``, a post needs ``min_id_count[sp_post]`` train rows for its own row; other ids
    keep their own minimum, and a post the train split never saw (a new post at serving) maps to row 0."""
    from pipelines.common.config import TrainConfig
    from pipelines.features.manifest import read_split
    from pipelines.train.setup import build_setup

    cfg = TrainConfig.model_validate({"model": {"exclude_sparse": [], "min_id_count": {"sp_post": 3}}})
    assert cfg.model.min_id_count == {"sp_viewer": 1, "sp_author": 1, "sp_post": 3}
    setup = build_setup(built_world, cfg)
    train = read_split(built_world, "train", ["sp_post", "sp_viewer"])
    posts, counts = np.unique(train["sp_post"].to_numpy(), return_counts=True)
    assert 0 < (counts >= 3).sum() < len(posts)  # the tiny world has both: the threshold matters
    assert setup.encoder.ids["sp_post"].tolist() == posts[counts >= 3].tolist()
    assert len(setup.encoder.ids["sp_viewer"]) == len(np.unique(train["sp_viewer"].to_numpy()))
    rows = setup.encoder.rows("sp_post", np.array([posts[counts >= 3][0], posts[counts < 3][0], 10**15]))
    assert rows[0] > 0
    assert rows[1:].tolist() == [0, 0]
    assert "sp_post" in setup.layout.sparse


def test_a_prepared_block_gives_the_same_batches_as_raw_columns(built_world: Path) -> None:
    """Training prepares each Ray Data block once (dense matrix, table rows) and makes each step's batch of
    it (issue 14): the batch, history and id dropout included, equals the one made from the raw columns
    with the same random draws."""
    from pipelines.common.config import TrainConfig
    from pipelines.features.manifest import arrow_columns, read_split
    from pipelines.train.setup import RankerTraining, build_setup

    cfg = TrainConfig.model_validate({"optim": {"history_dropout": 0.5}, "model": {"exclude_sparse": []}})
    training = RankerTraining(build_setup(built_world, cfg))
    assert len(training.forget.index) > 0
    table = read_split(built_world, "train", training.setup.columns).slice(0, 300)
    block = training.prepare_block(table)
    assert block.num_columns < table.num_columns
    got = training.train_batch(arrow_columns(block, jagged=True), np.random.default_rng(7))
    want = training.train_batch(arrow_columns(table), np.random.default_rng(7))
    # And what training did before blocks were prepared: history dropout on the raw columns (one draw per
    # row), then collate with id dropout.
    rng = np.random.default_rng(7)
    raw = arrow_columns(table)
    hit = rng.random(table.num_rows) < 0.5
    for name, value in training.setup.cold_viewer.items():
        raw[name] = np.array(raw[name], copy=True)
        raw[name][hit] = np.asarray(value, dtype=raw[name].dtype)
    before = collate(raw, training.setup.layout, training.setup.encoder, training.id_dropout, rng)
    torch.testing.assert_close(want.dense, before.dense)
    torch.testing.assert_close(want.sparse.values(), before.sparse.values())
    torch.testing.assert_close(got.dense, want.dense)
    assert got.sparse.keys() == want.sparse.keys()
    torch.testing.assert_close(got.sparse.values(), want.sparse.values())
    torch.testing.assert_close(got.sparse.lengths(), want.sparse.lengths())
    for task in want.labels:
        torch.testing.assert_close(got.labels[task], want.labels[task])
    torch.testing.assert_close(got.weights, want.weights)
    assert got.bias is not None
    assert want.bias is not None
    torch.testing.assert_close(got.bias, want.bias)
    hidden = training.forget.index
    cold_rows = (got.dense[:, hidden] == torch.from_numpy(training.forget.values)).all(1)
    assert 0 < int(cold_rows.sum()) < len(got)  # history dropout hit some rows, not all
    ev_got = training.eval_batch(arrow_columns(block.slice(10, 50), jagged=True))
    ev_want = training.eval_batch(arrow_columns(table.slice(10, 50)))
    torch.testing.assert_close(ev_got.dense, ev_want.dense)
    torch.testing.assert_close(ev_got.sparse.values(), ev_want.sparse.values())


def test_a_vocabulary_feature_left_out_has_no_table(built_world: Path) -> None:
    """``model.exclude_sparse`` can name any sparse feature: a vocabulary feature left out gets no table
    (a table without input crashed the first forward)."""
    from pipelines.common.config import TrainConfig
    from pipelines.features.manifest import arrow_columns, read_split
    from pipelines.train.setup import RankerTraining, build_setup

    cfg = TrainConfig.model_validate(
        {"model": {"exclude_sparse": ["sp_post", "sp_viewer", "sp_author", "sp_city"]}}
    )
    setup = build_setup(built_world, cfg)
    assert "sp_city" not in setup.encoder.table_rows()
    assert "sp_city" not in setup.layout.sparse
    batch = RankerTraining(setup).eval_batch(
        arrow_columns(read_split(built_world, "valid", setup.columns).slice(0, 64))
    )
    model = MultiTaskRanker(setup.spec)
    assert set(model(batch.dense, batch.sparse)) >= {"click", "dwell"}


def test_history_dropout_maps_cold_values_onto_the_matrix_columns() -> None:
    layout = FeatureLayout(dense=("u_a", "p_b"), vectors={"u_v": 2}, sparse=())
    forget = Forget.of(layout, {"u_a": 0.5, "u_v": [1.0, 2.0], "not_an_input": 3.0}, 0.3)
    assert forget.index.tolist() == [0, 2, 3]
    assert forget.values.tolist() == [0.5, 1.0, 2.0]
    with pytest.raises(ValueError, match="u_v: 3 numbers, width 2"):
        Forget.of(layout, {"u_v": [1.0, 2.0, 3.0]}, 0.3)
