"""The servable ranker: the unsharded :class:`MultiTaskRanker` with its input layout and id vocabularies.

This is what leaves training (gathered from the sharded tables) and what evaluation, MLflow and serving
load. It needs neither Ray nor a process group nor the training code: :meth:`ServableRanker.to_payload`
is a plain dict of tensors and builtins (``torch.load(..., weights_only=True)`` reads it back).

Example::

    >>> import numpy as np
    >>> from models.batch import FeatureLayout, SparseEncoder
    >>> from models.ranker import MultiTaskRanker, RankerSpec
    >>> layout = FeatureLayout(dense=("u_age",), vectors={}, sparse=("sp_viewer",))
    >>> enc = SparseEncoder(ids={"sp_viewer": np.array([7, 9])})
    >>> spec = RankerSpec(sparse=enc.table_rows(), n_dense=1, embedding_dim=4, bottom_mlp=(8,), top_mlp=(8,))
    >>> ranker = ServableRanker(MultiTaskRanker(spec), layout, enc)
    >>> again = ServableRanker.from_payload(ranker.to_payload())
    >>> p = again.predict({"u_age": np.array([0.2, 0.4]), "sp_viewer": np.array([9, 123])})
    >>> sorted(p)[:3], p["click"].shape
    (['click', 'comment', 'dwell'], (2,))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.batch import Batch, FeatureLayout, SparseEncoder, collate
from models.ranker import MultiTaskRanker, RankerSpec, probabilities

PAYLOAD_VERSION = 1


@dataclass
class ServableRanker:
    """An eval-mode ranker plus everything needed to turn feature columns into its inputs."""

    model: MultiTaskRanker
    layout: FeatureLayout
    encoder: SparseEncoder

    def __post_init__(self) -> None:
        self.model.eval()

    @property
    def input_columns(self) -> list[str]:
        return [*self.layout.dense, *self.layout.vectors, *self.layout.sparse]

    def batch(self, columns: dict[str, Any]) -> Batch:
        return collate(columns, self.layout, self.encoder)

    @torch.no_grad()
    def predict(self, columns: dict[str, Any], at_logged_position: bool = False) -> dict[str, np.ndarray]:
        """Feature columns (length B each) → ``{task: (B,)}``: probabilities, and dwell in milliseconds.

        As served, every item is scored at the top slot. ``at_logged_position`` applies the position-bias
        tower to the columns' logged position instead (offline calibration against logged outcomes).
        """
        b = self.batch(columns)
        bias = b.bias if at_logged_position else None
        out = probabilities(self.model(b.dense, b.sparse, bias))
        return {t: v.numpy().astype(np.float64) for t, v in out.items()}

    # ------------------------------------------------------------------ serialization (no pickled classes)
    def to_payload(self) -> dict[str, Any]:
        return {
            "version": PAYLOAD_VERSION,
            "spec": {
                **dataclasses.asdict(self.model.spec),
                "bottom_mlp": list(self.model.spec.bottom_mlp),
                "top_mlp": list(self.model.spec.top_mlp),
                "mean_pooled": list(self.model.spec.mean_pooled),
                "tasks": list(self.model.spec.tasks),
            },
            "layout": {
                "dense": list(self.layout.dense),
                "vectors": dict(self.layout.vectors),
                "sparse": list(self.layout.sparse),
                "bias": list(self.layout.bias),
            },
            "encoder": {
                "ids": {k: torch.from_numpy(np.asarray(v, np.int64)) for k, v in self.encoder.ids.items()},
                "codes": dict(self.encoder.codes),
            },
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> ServableRanker:
        if payload.get("version") != PAYLOAD_VERSION:
            raise ValueError(f"unsupported ranker payload version {payload.get('version')!r}")
        s = dict(payload["spec"])
        spec = RankerSpec(
            **{
                **s,
                "bottom_mlp": tuple(s["bottom_mlp"]),
                "top_mlp": tuple(s["top_mlp"]),
                "mean_pooled": tuple(s["mean_pooled"]),
                "tasks": tuple(s["tasks"]),
            }
        )
        model = MultiTaskRanker(spec)
        model.load_state_dict(payload["state_dict"])
        lay = payload["layout"]
        layout = FeatureLayout(
            dense=tuple(lay["dense"]),
            vectors=dict(lay["vectors"]),
            sparse=tuple(lay["sparse"]),
            bias=tuple(lay.get("bias", ())),
        )
        enc = payload["encoder"]
        encoder = SparseEncoder(
            ids={k: v.numpy() for k, v in enc["ids"].items()},
            codes={k: int(v) for k, v in enc["codes"].items()},
        )
        return cls(model, layout, encoder)

    def save(self, path: Any) -> None:
        torch.save(self.to_payload(), path)

    @classmethod
    def load(cls, path: Any) -> ServableRanker:
        return cls.from_payload(torch.load(path, weights_only=True))
