"""The two-tower retriever: a viewer tower and a post tower whose dot product scores (viewer, post) for
retrieval from an ANN index. Pure torch + torchrec, no Ray, no I/O.

::

    viewer dense ─► standardize ─┐
    viewer KJT ─► EBC (viewer) ──┴─► MLP ─► L2-normalize ─► u (B, out_dim) ─┐
                                                                           ├─► u · p / temperature
    post dense ─► standardize ───┐                                          │
    post KJT ─► EBC (post) ──────┴─► MLP ─► L2-normalize ─► p (B, out_dim) ─┘

The post tower sees what a post has the moment it exists (text embedding, media vector, topics,
modality, author features) and never its id, so a new post is embedded, indexed and retrievable at once;
a small prior network adds the post's state (age, counters) to the score, ``u · p / T + b``.
Training (:class:`RetrieverTrainWrapper`) is, by default, pointwise: binary cross-entropy of "engaged" on
every logged impression, with a training-only context tower (relation, affinity, slot) beside the
towers. ``loss: softmax`` is a sampled softmax over in-batch negatives instead: each engaged row's post
the positive, every other row's post a negative, with the sampling-bias correction of Yi et al. 2019
(``logit - log q(post)``).

Example::

    >>> import torch
    >>> from torchrec import KeyedJaggedTensor
    >>> spec = RetrieverSpec(sparse={"sp_city": 4, "sp_topics": 5}, viewer_dense=2, post_dense=3,
    ...                      viewer_sparse=("sp_city",), post_sparse=("sp_topics",), embedding_dim=4,
    ...                      tower_mlp=(8,), out_dim=6)
    >>> model = TwoTowerRetriever(spec)
    >>> kjt = KeyedJaggedTensor.from_lengths_sync(
    ...     keys=["sp_city", "sp_topics"], values=torch.tensor([1, 2, 3, 4, 0]),
    ...     lengths=torch.tensor([1, 1, 2, 1]))
    >>> u, p, b, c = model(torch.randn(2, 5), kjt)
    >>> u.shape, p.shape, round(float(u[0].norm()), 4)
    (torch.Size([2, 6]), torch.Size([2, 6]), 1.0)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType
from torchrec.modules.mlp import MLP

from models.batch import FeatureLayout, Jagged, SparseEncoder, collate
from models.ranker import safe_std


@dataclass(frozen=True)
class RetrieverSpec:
    """Everything that fixes the retriever's shapes (stored with the model so it can be rebuilt).

    The dense matrix a training batch carries is the viewer's ``viewer_dense`` columns, then the post's
    ``post_dense``, then the prior's ``prior_dense`` (each its own matrix at serving), then the training-only
    context's ``context_dense``; the sparse KJT has the viewer's keys, then the post's.

    ``loss``: ``softmax`` over in-batch negatives (engaged rows only), or ``pointwise``: binary
    cross-entropy of "engaged" on every logged impression, with the context tower absorbing what the
    towers must not learn (friendship, affinity, position) and left out at retrieval, as the ranker's
    position-bias tower is.
    """

    sparse: dict[str, int]  # feature → table rows (row 0 = out of vocabulary), both towers
    viewer_dense: int
    post_dense: int
    viewer_sparse: tuple[str, ...]
    post_sparse: tuple[str, ...]
    prior_dense: int = 0  # the post's state at scoring time (age, counters): a scalar prior, 0 = none
    context_dense: int = 0  # training only: the (viewer, post) relation and logged position, 0 = none
    loss: Literal["softmax", "pointwise"] = "softmax"
    embedding_dim: int = 16
    tower_mlp: tuple[int, ...] = (128,)
    out_dim: int = 32
    temperature: float = 0.05
    mean_pooled: tuple[str, ...] = ("sp_topics",)

    def tables(self, names: tuple[str, ...] | None = None) -> list[EmbeddingBagConfig]:
        return [
            EmbeddingBagConfig(
                name=f"t_{name}",
                embedding_dim=self.embedding_dim,
                num_embeddings=self.sparse[name],
                feature_names=[name],
                pooling=PoolingType.MEAN if name in self.mean_pooled else PoolingType.SUM,
            )
            for name in (names if names is not None else (*self.viewer_sparse, *self.post_sparse))
        ]


class _Tower(nn.Module):
    """Standardized dense inputs and pooled embeddings → MLP → unit vector."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self, spec: RetrieverSpec, n_dense: int, sparse: tuple[str, ...], device: torch.device | None
    ):
        super().__init__()
        self.keys = list(sparse)
        self.register_buffer("mean", torch.zeros(n_dense))
        self.register_buffer("std", torch.ones(n_dense))
        self.ebc = EmbeddingBagCollection(tables=spec.tables(sparse), device=device) if sparse else None
        self.mlp = MLP(n_dense + spec.embedding_dim * len(sparse), list(spec.tower_mlp))
        self.out = nn.Linear(spec.tower_mlp[-1], spec.out_dim)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor | None) -> torch.Tensor:
        parts = [(dense - self.mean) / self.std]
        if self.ebc is not None and sparse is not None:
            pooled = self.ebc(sparse).to_dict()
            parts += [pooled[k] for k in self.keys]
        return F.normalize(self.out(self.mlp(torch.cat(parts, dim=1))), dim=1)


class _Prior(nn.Module):
    """The post's state at scoring time (log age, log counters, smoothed rates) → one logit offset: what
    the static post vector cannot know (freshness, how the post is doing), shared by every viewer."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, n_dense: int, hidden: int = 32) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_dense))
        self.register_buffer("std", torch.ones(n_dense))
        self.mlp = nn.Sequential(nn.Linear(n_dense, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return self.mlp((dense - self.mean) / self.std).squeeze(1)


class TwoTowerRetriever(nn.Module):
    """``forward(dense, sparse) -> (u, p, b, c)``: both towers, the prior and the context offset (zeros
    without one) on a training batch.

    The score of (viewer, post) is ``u · p / temperature + b``. :meth:`viewer`, :meth:`post` and
    :meth:`prior` run one part on its own inputs (serving and the index builder: the index holds ``p``,
    ``b`` is computed for the posts the index returns). ``device``: where the tables are created
    (``meta`` under ``DistributedModelParallel``).
    """

    def __init__(self, spec: RetrieverSpec, device: torch.device | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.viewer_tower = _Tower(spec, spec.viewer_dense, spec.viewer_sparse, device)
        self.post_tower = _Tower(spec, spec.post_dense, spec.post_sparse, device)
        self.prior_net = _Prior(spec.prior_dense) if spec.prior_dense else None
        self.context_net = _Prior(spec.context_dense) if spec.context_dense else None

    def set_standardization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """``mean``/``std`` over the training matrix (viewer columns, post columns, prior columns)."""
        n, m, k = self._bounds()
        parts: list[tuple[Any, slice]] = [(self.viewer_tower, slice(0, n)), (self.post_tower, slice(n, m))]
        parts += [(self.prior_net, slice(m, k)), (self.context_net, slice(k, None))]
        for part, sl in parts:
            if part is None:
                continue
            part.mean.copy_(mean[sl])
            part.std.copy_(safe_std(std[sl]))

    def viewer(self, dense: torch.Tensor, sparse: KeyedJaggedTensor | None) -> torch.Tensor:
        return self.viewer_tower(dense, sparse)

    def post(self, dense: torch.Tensor, sparse: KeyedJaggedTensor | None) -> torch.Tensor:
        return self.post_tower(dense, sparse)

    def prior(self, dense: torch.Tensor) -> torch.Tensor:
        """(N,) logit offsets; zeros without a prior."""
        return self.prior_net(dense) if self.prior_net is not None else torch.zeros(len(dense))

    def _bounds(self) -> tuple[int, int, int]:
        """Where the viewer's, post's and prior's columns end in a training matrix."""
        n = self.spec.viewer_dense
        return n, n + self.spec.post_dense, n + self.spec.post_dense + self.spec.prior_dense

    def forward(
        self, dense: torch.Tensor, sparse: KeyedJaggedTensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        n, m, k = self._bounds()
        nv = len(self.spec.viewer_sparse)
        parts = sparse.split([nv, len(self.spec.post_sparse)]) if nv and self.spec.post_sparse else None
        v_kjt = parts[0] if parts else (sparse if nv else None)
        p_kjt = parts[1] if parts else (None if nv else sparse)
        u, p, b = self.viewer(dense[:, :n], v_kjt), self.post(dense[:, n:m], p_kjt), self.prior(dense[:, m:k])
        c = self.context_net(dense[:, k:]) if self.context_net is not None else torch.zeros_like(b)
        return u, p, b, c


@dataclass
class RetrieverBatch:
    """Engaged (viewer, post) rows: both towers' inputs, the post's sampling log-probability and a key that
    is equal for equal posts (in-batch duplicates are not negatives of each other)."""

    dense: torch.Tensor  # (B, viewer_dense + post_dense)
    sparse: KeyedJaggedTensor
    logq: torch.Tensor  # (B,) the post's sampling correction (log share of positives, per exposure)
    post_key: torch.Tensor  # (B,) int64
    weights: torch.Tensor  # (B,)
    label: torch.Tensor | None = None  # (B,) 1 engaged, 0 not: the pointwise loss's target

    def __len__(self) -> int:
        return int(self.dense.shape[0])

    def to(self, device: torch.device, non_blocking: bool = False) -> RetrieverBatch:
        return RetrieverBatch(
            self.dense.to(device, non_blocking=non_blocking),
            self.sparse.to(device, non_blocking=non_blocking),
            self.logq.to(device, non_blocking=non_blocking),
            self.post_key.to(device, non_blocking=non_blocking),
            self.weights.to(device, non_blocking=non_blocking),
            None if self.label is None else self.label.to(device, non_blocking=non_blocking),
        )


def in_batch_softmax(
    u: torch.Tensor,
    p: torch.Tensor,
    logq: torch.Tensor,
    post_key: torch.Tensor,
    temperature: float,
    prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-row loss of the sampled softmax over in-batch negatives with the logQ correction (``logq``: one
    per column) and the posts' ``prior`` offsets; a column holding the same post as the row's positive is
    masked out (it is not a negative).

    >>> u = torch.eye(3); p = torch.eye(3)
    >>> loss = in_batch_softmax(u, p, torch.zeros(3), torch.arange(3), 0.1)
    >>> bool((loss < 1e-3).all())
    True
    """
    column = -logq if prior is None else prior - logq
    logits = u @ p.T / temperature + column[None, :]
    same = post_key[:, None] == post_key[None, :]
    eye = torch.eye(len(u), dtype=torch.bool, device=u.device)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(u), device=u.device), reduction="none")


class RetrieverTrainWrapper(nn.Module):
    """``forward(batch) -> (loss, (losses, outputs))`` as :class:`pipelines.train.loop.TrainLoop` calls it;
    ``losses`` has ``loss/<spec.loss>`` and ``loss/total`` (the sample-weighted mean)."""

    def __init__(self, model: TwoTowerRetriever) -> None:
        super().__init__()
        self.model = model
        self.intercept = nn.Parameter(torch.zeros(1))  # pointwise: the base rate (no ranking effect)

    def forward(
        self, batch: RetrieverBatch
    ) -> tuple[torch.Tensor, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
        spec = self.model.spec
        u, p, b, c = self.model(batch.dense, batch.sparse)
        if spec.loss == "pointwise":
            if batch.label is None:
                raise ValueError("the pointwise loss needs each row's engaged label")
            logit = (u * p).sum(1) / spec.temperature + b + c + self.intercept
            raw = F.binary_cross_entropy_with_logits(logit, batch.label, reduction="none")
        else:
            raw = in_batch_softmax(u, p, batch.logq, batch.post_key, spec.temperature, b)
        loss = (raw * batch.weights).sum() / batch.weights.sum().clamp_min(1e-9)
        losses = {f"loss/{spec.loss}": loss.detach(), "loss/total": loss.detach()}
        return loss, (losses, {"viewer": u, "post": p, "prior": b})


# --------------------------------------------------------------------------------------------- serving
PAYLOAD_VERSION = 1


def _rows(column: Any, rows: np.ndarray) -> Any:
    return column.take(rows) if isinstance(column, Jagged) else np.asarray(column)[rows]


def _layout_payload(layout: FeatureLayout) -> dict[str, Any]:
    return {"dense": list(layout.dense), "vectors": dict(layout.vectors), "sparse": list(layout.sparse)}


def _layout(payload: dict[str, Any]) -> FeatureLayout:
    return FeatureLayout(tuple(payload["dense"]), dict(payload["vectors"]), tuple(payload["sparse"]))


@dataclass
class ServableRetriever:
    """An eval-mode retriever plus each tower's input layout and the vocabulary sizes: what leaves
    training, what the index builder embeds posts with and what serving embeds viewers with.

    >>> import numpy as np
    >>> viewer = FeatureLayout(dense=("u_age",), vectors={}, sparse=("sp_city",))
    >>> post = FeatureLayout(dense=(), vectors={"p_media": 2}, sparse=())
    >>> enc = SparseEncoder(codes={"sp_city": 4})
    >>> spec = RetrieverSpec(sparse={"sp_city": 4}, viewer_dense=1, post_dense=2, viewer_sparse=("sp_city",),
    ...                      post_sparse=(), embedding_dim=4, tower_mlp=(8,), out_dim=3)
    >>> r = ServableRetriever(TwoTowerRetriever(spec), viewer, post, enc)
    >>> again = ServableRetriever.from_payload(r.to_payload())
    >>> u = again.embed_viewers({"u_age": np.array([30.0, 40.0]), "sp_city": np.array([1, 9])})
    >>> p = again.embed_posts({"p_media": np.ones((5, 2))})
    >>> u.shape, p.shape, u.dtype
    ((2, 3), (5, 3), dtype('float32'))
    """

    model: TwoTowerRetriever
    viewer_layout: FeatureLayout
    post_layout: FeatureLayout
    encoder: SparseEncoder
    prior_layout: FeatureLayout | None = None  # the post's state at scoring time; None: no prior

    def __post_init__(self) -> None:
        self.model.eval()

    @property
    def temperature(self) -> float:
        return self.model.spec.temperature

    @property
    def dim(self) -> int:
        return self.model.spec.out_dim

    @property
    def viewer_columns(self) -> list[str]:
        lay = self.viewer_layout
        return [*lay.dense, *lay.vectors, *lay.sparse]

    @property
    def post_columns(self) -> list[str]:
        lay = self.post_layout
        return [*lay.dense, *lay.vectors, *lay.sparse]

    @property
    def prior_columns(self) -> list[str]:
        lay = self.prior_layout
        return [] if lay is None else [*lay.dense, *lay.vectors]

    @torch.no_grad()
    def embed_viewers(self, columns: dict[str, Any]) -> np.ndarray:
        """Viewer feature columns (length B each) → (B, dim) float32 unit vectors."""
        b = collate(columns, self.viewer_layout, self.encoder)
        return self.model.viewer(b.dense, b.sparse if self.viewer_layout.sparse else None).numpy()

    @torch.no_grad()
    def embed_posts(self, columns: dict[str, Any], batch_size: int = 4096) -> np.ndarray:
        """Post feature columns (length N each) → (N, dim) float32 unit vectors, ``batch_size`` at a time."""
        n = len(columns[self.post_columns[0]])
        out = np.zeros((n, self.dim), np.float32)
        for lo in range(0, n, batch_size):
            rows = np.arange(lo, min(lo + batch_size, n))
            part = {k: _rows(columns[k], rows) for k in self.post_columns}
            b = collate(part, self.post_layout, self.encoder)
            out[lo : lo + batch_size] = self.model.post(
                b.dense, b.sparse if self.post_layout.sparse else None
            )
        return out

    @torch.no_grad()
    def prior(self, columns: dict[str, Any], n: int) -> np.ndarray:
        """The state columns of ``n`` posts (as of now) → (n,) logit offsets; zeros without a prior."""
        if self.prior_layout is None:
            return np.zeros(n, np.float32)
        b = collate(columns, self.prior_layout, self.encoder)
        return self.model.prior(b.dense).numpy()

    def scores(self, viewer: np.ndarray, posts: np.ndarray, prior: np.ndarray | None = None) -> np.ndarray:
        """The retrieval score of one viewer vector against post vectors (N, dim): ``u · p / T + b``."""
        s = posts @ viewer / self.temperature
        return s if prior is None else s + prior

    # ------------------------------------------------------------------ serialization (no pickled classes)
    def to_payload(self) -> dict[str, Any]:
        spec = self.model.spec
        return {
            "version": PAYLOAD_VERSION,
            "kind": "two-tower",
            "spec": {
                **dataclasses.asdict(spec),
                "viewer_sparse": list(spec.viewer_sparse),
                "post_sparse": list(spec.post_sparse),
                "tower_mlp": list(spec.tower_mlp),
                "mean_pooled": list(spec.mean_pooled),
            },
            "viewer_layout": _layout_payload(self.viewer_layout),
            "post_layout": _layout_payload(self.post_layout),
            "prior_layout": None if self.prior_layout is None else _layout_payload(self.prior_layout),
            "codes": dict(self.encoder.codes),
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> ServableRetriever:
        if payload.get("version") != PAYLOAD_VERSION or payload.get("kind") != "two-tower":
            raise ValueError(f"not a retriever payload (version {payload.get('version')!r})")
        s = dict(payload["spec"])
        for key in ("viewer_sparse", "post_sparse", "tower_mlp", "mean_pooled"):
            s[key] = tuple(s[key])
        model = TwoTowerRetriever(RetrieverSpec(**s))
        model.load_state_dict(payload["state_dict"])
        encoder = SparseEncoder(codes={k: int(v) for k, v in payload["codes"].items()})
        prior = payload.get("prior_layout")
        return cls(
            model,
            _layout(payload["viewer_layout"]),
            _layout(payload["post_layout"]),
            encoder,
            None if prior is None else _layout(prior),
        )

    def save(self, path: Any) -> None:
        torch.save(self.to_payload(), path)

    @classmethod
    def load(cls, path: Any) -> ServableRetriever:
        return cls.from_payload(torch.load(path, weights_only=True))
