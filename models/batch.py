"""From feature columns to model inputs: the one collate function training, evaluation and serving share.

A batch arrives as columns (``dict[str, np.ndarray]``, as Ray Data's ``iter_batches(batch_format="numpy")``
yields them, or as serving assembles them). :class:`FeatureLayout` says which columns are dense, which are
fixed-length vectors and which are sparse; :class:`SparseEncoder` maps raw sparse values to embedding
table rows (row 0 = out of vocabulary). :func:`collate` returns a :class:`Batch`; it is :func:`prepare`
(the per-row work: the dense matrix and table rows, which training does once per Ray Data block) then
:func:`finish` (a step's tensors, with training's history and id dropout).

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

    def take(self, index: np.ndarray) -> Jagged:
        """The rows ``index``, in that order (array operations only).

        >>> Jagged(np.array([1, 2, 3, 4]), np.array([1, 0, 3])).take(np.array([2, 0])).rows()
        [[2, 3, 4], [1]]
        """
        starts = (np.cumsum(self.lengths) - self.lengths)[index]  # (k,)
        lengths = np.asarray(self.lengths)[index]  # (k,)
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return Jagged(np.asarray(self.values)[np.repeat(starts, lengths) + within], lengths)

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


#: Prepared columns (:func:`prepare`): the dense matrix, and each sparse feature's table rows.
DENSE = "_dense"
ROWS = "_rows:"


@dataclass(frozen=True)
class Forget:
    """History dropout on the dense matrix: with probability ``rate`` a row's columns ``index`` take
    ``values`` (what a viewer without history has)."""

    index: np.ndarray  # (k,) int64 matrix columns
    values: np.ndarray  # (k,) float32
    rate: float

    @staticmethod
    def of(layout: FeatureLayout, cold: Mapping[str, Any], rate: float) -> Forget:
        """``cold``: column → value (a list for a vector), in the matrix order of ``layout``."""
        starts, widths, at = {}, {}, 0
        for name in layout.dense:
            starts[name], widths[name], at = at, 1, at + 1
        for name, dim in layout.vectors.items():
            starts[name], widths[name], at = at, dim, at + dim
        index: list[int] = []
        values: list[float] = []
        for name, value in cold.items():
            if name in starts:
                flat = np.atleast_1d(np.asarray(value, np.float32))
                if len(flat) != widths[name]:
                    raise ValueError(f"cold value of {name}: {len(flat)} numbers, width {widths[name]}")
                index += range(starts[name], starts[name] + len(flat))
                values += flat.tolist()
        return Forget(np.array(index, np.int64), np.array(values, np.float32), rate)


def collate(
    columns: dict[str, Any],
    layout: FeatureLayout,
    encoder: SparseEncoder,
    id_dropout: float | Mapping[str, float] = 0.0,
    rng: np.random.Generator | None = None,
) -> Batch:
    """Columns → :class:`Batch`: :func:`prepare`, then :func:`finish`.

    ``id_dropout`` (training only) sends that share of id values to row 0, so the model learns to score
    unseen users and posts from content and counters: one rate for every id feature, or a rate per
    feature (``{"sp_viewer": 0.3}``; features not named keep their ids).
    """
    return finish(prepare(columns, layout, encoder), layout, encoder, id_dropout, rng)


def prepare(columns: dict[str, Any], layout: FeatureLayout, encoder: SparseEncoder) -> dict[str, Any]:
    """The per-row work of a batch, done once: the dense matrix (``DENSE``: dense columns, then the vectors'
    elements) and each sparse feature's table rows (``ROWS + name``: an array, or :class:`Jagged` for
    lists); labels, weights and bias columns pass through. Training runs it once per Ray Data block
    (:meth:`pipelines.train.setup.RankerTraining.prepare_block`) instead of once per step and epoch."""
    n = len(columns[next(iter((*layout.dense, *layout.vectors, *layout.sparse)))])
    out: dict[str, Any] = {DENSE: _dense(columns, layout, n)}
    for name in layout.sparse:
        col = columns[name]
        arr = None if isinstance(col, Jagged) else np.asarray(col)
        if arr is None:  # multi-valued, already jagged
            out[ROWS + name] = Jagged(encoder.rows(name, col.values), np.asarray(col.lengths, np.int64))
        elif arr.dtype == object:  # multi-valued (lists)
            lens = np.array([len(v) for v in col], dtype=np.int64)
            flat = (
                np.concatenate([np.asarray(v, np.int64) for v in col])
                if lens.sum()
                else np.zeros(0, np.int64)
            )
            out[ROWS + name] = Jagged(encoder.rows(name, flat), lens)
        else:
            out[ROWS + name] = encoder.rows(name, arr)
    for col in (*(("dwell_ms" if t == "dwell" else t) for t in TASKS), "sample_weight", *layout.bias):
        if col in columns:
            out[col] = np.asarray(columns[col], np.float32)
    return out


def finish(
    prepared: dict[str, Any],
    layout: FeatureLayout,
    encoder: SparseEncoder,
    id_dropout: float | Mapping[str, float] = 0.0,
    rng: np.random.Generator | None = None,
    forget: Forget | None = None,
) -> Batch:
    """Prepared columns → :class:`Batch`, with training's per-step randomness: ``forget`` (history dropout
    on the matrix, drawn first) and ``id_dropout`` (ids to row 0)."""
    dense = np.asarray(prepared[DENSE], np.float32)
    n = len(dense)
    if forget is not None and forget.rate > 0 and len(forget.index):
        hit = (rng or np.random.default_rng()).random(n) < forget.rate  # (n,) rows that forget
        dense = dense.copy()
        dense[np.ix_(hit, forget.index)] = forget.values
    values: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    for name in layout.sparse:
        col = prepared[ROWS + name]
        if isinstance(col, Jagged):
            rows, lens = np.asarray(col.values, np.int64), np.asarray(col.lengths, np.int64)
        else:
            rows, lens = np.asarray(col, np.int64), np.ones(n, np.int64)
        rate = id_dropout.get(name, 0.0) if isinstance(id_dropout, Mapping) else id_dropout
        if rate > 0 and name in encoder.ids:
            gen = rng or np.random.default_rng()
            rows = np.where(gen.random(len(rows)) < rate, 0, rows)
        values.append(rows)
        lengths.append(lens)
    sparse = KeyedJaggedTensor.from_lengths_sync(
        keys=list(layout.sparse),
        values=torch.from_numpy(np.concatenate(values) if values else np.zeros(0, np.int64)),
        lengths=torch.from_numpy(np.concatenate(lengths) if lengths else np.zeros(0, np.int64)),
    )
    labels = {}
    for task in TASKS:
        col = "dwell_ms" if task == "dwell" else task
        if col in prepared:
            labels[task] = torch.from_numpy(np.array(prepared[col], dtype=np.float32))
    w = prepared.get("sample_weight")
    weights = torch.from_numpy(np.array(w, dtype=np.float32)) if w is not None else torch.ones(n)
    bias = None
    if layout.bias and all(c in prepared for c in layout.bias):
        bias = torch.from_numpy(np.stack([np.asarray(prepared[c], np.float32) for c in layout.bias], axis=1))
    if not dense.flags.writeable or not dense.flags.c_contiguous:  # a zero-copy view of an Arrow block
        dense = np.ascontiguousarray(dense).copy()
    dense_t = torch.from_numpy(dense)
    return Batch(dense=dense_t, sparse=sparse, labels=labels, weights=weights, bias=bias)


def _dense(columns: dict[str, Any], layout: FeatureLayout, n: int) -> np.ndarray:
    """The dense columns, then the vectors' elements: (n, layout.n_dense) float32."""
    parts = (
        [np.stack([np.asarray(columns[c], dtype=np.float32) for c in layout.dense], axis=1)]
        if layout.dense
        else []
    )
    parts += [_vectors(columns[name], dim, n) for name, dim in layout.vectors.items()]
    return np.concatenate(parts, axis=1) if parts else np.zeros((n, 0), np.float32)
