"""From feature columns to model inputs: the one collate function training, evaluation and serving share.

A batch arrives as columns (``dict[str, np.ndarray]``, as Ray Data's ``iter_batches(batch_format="numpy")``
yields them, or as serving assembles them). :class:`FeatureLayout` says which columns are dense, which are
fixed-length vectors and which are sparse; :class:`SparseEncoder` maps raw sparse values to embedding
table rows (row 0 = out of vocabulary). :func:`collate` returns a :class:`Batch`.

Example::

    >>> import numpy as np
    >>> layout = FeatureLayout(dense=("u_age",), vectors={"p_media": 2}, sparse=("sp_viewer", "sp_topics"))
    >>> enc = SparseEncoder(ids={"sp_viewer": np.array([7, 9])}, codes={"sp_topics": 4})
    >>> topics = np.empty(2, dtype=object)
    >>> topics[:] = [np.array([1, 3]), np.array([2])]
    >>> cols = {"u_age": np.array([0.3, 0.5]), "p_media": np.array([[1.0, 0.0], [0.0, 1.0]]),
    ...         "sp_viewer": np.array([9, 8]), "sp_topics": topics}
    >>> b = collate(cols, layout, enc)
    >>> b.dense.shape, b.sparse["sp_viewer"].values().tolist(), b.sparse["sp_topics"].lengths().tolist()
    (torch.Size([2, 3]), [2, 0], [2, 1])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torchrec import KeyedJaggedTensor

from models.tasks import TASKS


@dataclass(frozen=True)
class Jagged:
    """A multi-valued column in the jagged layout: ``values`` of every row back to back, ``lengths`` per row.

    Serving builds these with array operations, so no per-row Python object is made for a 2,000-row batch.
    """

    values: np.ndarray  # (sum(lengths),) int64
    lengths: np.ndarray  # (rows,) int64

    def __len__(self) -> int:
        return len(self.lengths)

    def rows(self) -> list[list[int]]:
        ends = np.cumsum(self.lengths)
        return [self.values[e - n : e].tolist() for e, n in zip(ends, self.lengths, strict=True)]

    @staticmethod
    def concat(parts: list[Jagged]) -> Jagged:
        return Jagged(np.concatenate([p.values for p in parts]), np.concatenate([p.lengths for p in parts]))


@dataclass(frozen=True)
class FeatureLayout:
    """Which input columns feed the model, in order."""

    dense: tuple[str, ...]
    vectors: dict[str, int]
    sparse: tuple[str, ...]
    bias: tuple[str, ...] = ()  # training-only bias inputs (logged position); absent at serving

    @property
    def n_dense(self) -> int:
        return len(self.dense) + sum(self.vectors.values())


@dataclass
class SparseEncoder:
    """Raw sparse values → embedding-table rows.

    ``ids``: for high-cardinality id features, the sorted ids seen in training; id ``ids[i]`` → row
    ``i + 1``, anything else → row 0. ``codes``: for vocabulary-coded features, the table size; codes
    outside ``[0, size)`` → row 0. Either way row 0 is what a new user, author or post gets.
    """

    ids: dict[str, np.ndarray] = field(default_factory=dict)
    codes: dict[str, int] = field(default_factory=dict)

    def table_rows(self) -> dict[str, int]:
        rows = {k: len(v) + 1 for k, v in self.ids.items()}
        rows.update(self.codes)
        return rows

    def rows(self, name: str, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.int64)
        if name in self.ids:
            vocab = self.ids[name]
            if len(vocab) == 0:
                return np.zeros(len(values), np.int64)
            pos = np.minimum(np.searchsorted(vocab, values), len(vocab) - 1)
            return np.where(vocab[pos] == values, pos + 1, 0)
        size = self.codes[name]
        return np.where((values >= 0) & (values < size), values, 0)


@dataclass
class Batch:
    """Model inputs and, when the columns carry them, labels and sample weights: what
    :class:`models.train_wrapper.RankerTrainWrapper` takes as one argument."""

    dense: torch.Tensor  # (B, n_dense) float32
    sparse: KeyedJaggedTensor
    labels: dict[str, torch.Tensor]  # task → (B,) float32; dwell in ms
    weights: torch.Tensor  # (B,)
    bias: torch.Tensor | None = None  # (B, n_bias) when the columns carry the bias inputs

    def __len__(self) -> int:
        return int(self.dense.shape[0])

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        """The same batch with every tensor on ``device`` (what a training or evaluation step feeds)."""
        return Batch(
            dense=self.dense.to(device, non_blocking=non_blocking),
            sparse=self.sparse.to(device, non_blocking=non_blocking),
            labels={k: v.to(device, non_blocking=non_blocking) for k, v in self.labels.items()},
            weights=self.weights.to(device, non_blocking=non_blocking),
            bias=None if self.bias is None else self.bias.to(device, non_blocking=non_blocking),
        )


def _vectors(column: Any, dim: int, n: int) -> np.ndarray:
    arr = np.asarray(column)
    if arr.dtype == object:
        arr = np.stack([np.asarray(v, dtype=np.float32) for v in column]) if n else np.zeros((0, dim))
    return arr.reshape(n, dim).astype(np.float32)


def collate(
    columns: dict[str, Any],
    layout: FeatureLayout,
    encoder: SparseEncoder,
    id_dropout: float | Mapping[str, float] = 0.0,
    rng: np.random.Generator | None = None,
) -> Batch:
    """Columns → :class:`Batch`.

    ``id_dropout`` (training only) sends that share of id values to row 0, so the model learns to score
    unseen users and posts from content and counters: one rate for every id feature, or a rate per
    feature (``{"sp_viewer": 0.3}``; features not named keep their ids).
    """
    first = layout.dense[0] if layout.dense else next(iter(layout.vectors))
    n = len(columns[first])
    dense = _dense(columns, layout, n)
    sparse = _sparse(columns, layout, encoder, n, id_dropout, rng)
    labels = {}
    for task in TASKS:
        col = "dwell_ms" if task == "dwell" else task
        if col in columns:
            labels[task] = torch.from_numpy(np.array(columns[col], dtype=np.float32))
    w = columns.get("sample_weight")
    weights = torch.from_numpy(np.array(w, dtype=np.float32)) if w is not None else torch.ones(n)
    bias = None
    if layout.bias and all(c in columns for c in layout.bias):
        bias = torch.from_numpy(np.stack([np.asarray(columns[c], np.float32) for c in layout.bias], axis=1))
    return Batch(dense=dense, sparse=sparse, labels=labels, weights=weights, bias=bias)


def _dense(columns: dict[str, Any], layout: FeatureLayout, n: int) -> torch.Tensor:
    """The dense columns, then the vectors' elements: (n, layout.n_dense) float32."""
    parts = (
        [np.stack([np.asarray(columns[c], dtype=np.float32) for c in layout.dense], axis=1)]
        if layout.dense
        else []
    )
    parts += [_vectors(columns[name], dim, n) for name, dim in layout.vectors.items()]
    return torch.from_numpy(np.concatenate(parts, axis=1) if parts else np.zeros((n, 0), np.float32))


def _sparse(
    columns: dict[str, Any],
    layout: FeatureLayout,
    encoder: SparseEncoder,
    n: int,
    id_dropout: float | Mapping[str, float],
    rng: np.random.Generator | None,
) -> KeyedJaggedTensor:
    """The sparse columns (single values, lists or :class:`Jagged`) as table rows, feature-major."""
    values: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    for name in layout.sparse:
        col = columns[name]
        arr = None if isinstance(col, Jagged) else np.asarray(col)
        if arr is None:  # multi-valued, already jagged
            lens, flat = np.asarray(col.lengths, np.int64), np.asarray(col.values, np.int64)
        elif arr.dtype == object:  # multi-valued (lists)
            lens = np.array([len(v) for v in col], dtype=np.int64)
            flat = (
                np.concatenate([np.asarray(v, dtype=np.int64) for v in col])
                if lens.sum()
                else np.zeros(0, np.int64)
            )
        else:
            lens = np.ones(n, dtype=np.int64)
            flat = arr.astype(np.int64)
        rows = encoder.rows(name, flat)
        rate = id_dropout.get(name, 0.0) if isinstance(id_dropout, Mapping) else id_dropout
        if rate > 0 and name in encoder.ids:
            gen = rng or np.random.default_rng()
            rows = np.where(gen.random(len(rows)) < rate, 0, rows)
        values.append(rows)
        lengths.append(lens)
    return KeyedJaggedTensor.from_lengths_sync(
        keys=list(layout.sparse),
        values=torch.from_numpy(np.concatenate(values) if values else np.zeros(0, np.int64)),
        lengths=torch.from_numpy(np.concatenate(lengths) if lengths else np.zeros(0, np.int64)),
    )
