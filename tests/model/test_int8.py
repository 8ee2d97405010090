"""The int8 bench's parts: a quantized copy of a ranker scores like it, and the per-request order check."""

from __future__ import annotations

import numpy as np
import torch

from bench.int8 import kendall_per_request, quantized
from models.batch import FeatureLayout, SparseEncoder
from models.ranker import MultiTaskRanker, RankerSpec
from models.servable import ServableRanker


def test_a_quantized_ranker_scores_like_the_original_and_leaves_it_untouched() -> None:
    torch.manual_seed(0)
    layout = FeatureLayout(dense=("u_age", "p_age_h"), vectors={}, sparse=("sp_city",))
    enc = SparseEncoder(ids={"sp_city": np.arange(50)})
    spec = RankerSpec(sparse=enc.table_rows(), n_dense=2, embedding_dim=8, bottom_mlp=(16,), top_mlp=(16,))
    ranker = ServableRanker(MultiTaskRanker(spec), layout, enc)
    rng = np.random.default_rng(0)
    cols = {"u_age": rng.random(300), "p_age_h": rng.random(300), "sp_city": rng.integers(0, 50, 300)}
    before = ranker.predict(cols)
    q = quantized(ranker)
    got = q.predict(cols)
    assert set(got) == set(before)
    for t in before:
        assert got[t].shape == before[t].shape
        np.testing.assert_allclose(got[t], before[t], rtol=0.05, atol=0.02 if t != "dwell" else 50.0)
    assert isinstance(ranker.model.heads["click"], torch.nn.Linear)  # the fp32 ranker is not quantized
    for t, v in ranker.predict(cols).items():
        np.testing.assert_array_equal(v, before[t])


def test_kendall_per_request_compares_orders_within_each_request() -> None:
    rid = np.array(["a"] * 5 + ["b"] * 5 + ["c"] * 2)
    a = np.array([1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2], float)
    b = np.array([1, 2, 3, 4, 5, 5, 4, 3, 2, 1, 2, 1], float)
    tau = kendall_per_request(rid, a, b)
    np.testing.assert_allclose(sorted(tau.tolist()), [-1.0, 1.0])  # "c" has fewer than 5 items
