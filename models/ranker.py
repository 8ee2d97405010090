"""The multitask DLRM-style ranker: pure torch + torchrec, no Ray, no I/O.

::

    dense (B, n_dense) ─► standardize ─► DenseArch (bottom MLP) ─► (B, D) ──┐
                                                                          ├─► interaction ─► shared ─► heads
    sparse KJT ─► EmbeddingBagCollection ─► SparseArch ─► (B, F, D) ──────┘   dot or DCNv2    MLP (B, H)

One output per task: a logit for the binary tasks (click, like, comment, share, hide, skip) and the
predicted ``log1p(dwell seconds)`` for dwell. The module is what serving runs; losses live in
:class:`models.train_wrapper.RankerTrainWrapper`.

The sparse input is a ``KeyedJaggedTensor`` with one key per sparse feature. Values are already table row
indices (see :class:`models.batch.SparseEncoder`): row 0 of every table is the out-of-vocabulary /
missing bucket, which is how new users and new posts are scored (cold start)::

    keys:     sp_viewer  sp_author  sp_post  …  sp_topics
    batch 0:  [17]       [4]        [0]         [3, 9]        ← a new post: row 0
    batch 1:  [2]        [11]       [250]       [5]
    lengths = [1, 1, 1, 1, 1, 1, …, 2, 1]    (feature-major: all rows of a key, then the next key)

Example::

    >>> import torch
    >>> from torchrec import KeyedJaggedTensor
    >>> spec = RankerSpec(sparse={"sp_viewer": 10, "sp_topics": 5}, n_dense=3, embedding_dim=4,
    ...                   bottom_mlp=(8,), top_mlp=(8,))
    >>> model = MultiTaskRanker(spec)
    >>> kjt = KeyedJaggedTensor.from_lengths_sync(
    ...     keys=["sp_viewer", "sp_topics"], values=torch.tensor([1, 2, 3, 4, 0]),
    ...     lengths=torch.tensor([1, 1, 2, 1]))
    >>> out = model(torch.randn(2, 3), kjt)
    >>> sorted(out), out["click"].shape
    (['click', 'comment', 'dwell', 'hide', 'like', 'share', 'skip'], torch.Size([2]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType
from torchrec.models.dlrm import DenseArch, InteractionArch, InteractionDCNArch, SparseArch
from torchrec.modules.crossnet import LowRankCrossNet
from torchrec.modules.mlp import MLP

from models.tasks import BINARY_TASKS, TASKS


@dataclass(frozen=True)
class RankerSpec:
    """Everything that fixes the ranker's shapes (stored with the model so it can be rebuilt)."""

    sparse: dict[str, int]  # feature → table rows (row 0 = out of vocabulary)
    n_dense: int
    embedding_dim: int = 16
    bottom_mlp: tuple[int, ...] = (64,)
    top_mlp: tuple[int, ...] = (128, 64)
    interaction: Literal["dot", "dcn"] = "dot"
    dcn_layers: int = 2
    dcn_rank: int = 16
    mean_pooled: tuple[str, ...] = ("sp_topics",)  # multi-valued features averaged, others summed
    tasks: tuple[str, ...] = field(default=TASKS)
    n_bias: int = 0  # bias-only inputs (logged position): a linear "shallow tower", left out at serving
    wide: bool = False  # a linear path from the standardized dense inputs to every logit (Wide & Deep)

    def tables(self) -> list[EmbeddingBagConfig]:
        return [
            EmbeddingBagConfig(
                name=f"t_{name}",
                embedding_dim=self.embedding_dim,
                num_embeddings=rows,
                feature_names=[name],
                pooling=PoolingType.MEAN if name in self.mean_pooled else PoolingType.SUM,
            )
            for name, rows in self.sparse.items()
        ]


class MultiTaskRanker(nn.Module):
    """DLRM with one head per task (click, like, comment, share, hide, skip logits; dwell regression).

    Args:
        spec: shapes and architecture choices.
        device: where the embedding tables are created; ``torch.device("meta")`` lets TorchRec's
            ``DistributedModelParallel`` materialize only each rank's shards.

    Shapes: ``dense`` (B, n_dense) float; ``sparse`` a KJT with ``spec.sparse`` keys and batch size B;
    ``bias`` (B, n_bias) or None; returns ``{task: (B,)}``.
    """

    dense_mean: torch.Tensor
    dense_std: torch.Tensor

    def __init__(self, spec: RankerSpec, device: torch.device | None = None) -> None:
        super().__init__()
        self.spec = spec
        d = spec.embedding_dim
        self.register_buffer("dense_mean", torch.zeros(spec.n_dense))
        self.register_buffer("dense_std", torch.ones(spec.n_dense))
        self.sparse_arch = SparseArch(EmbeddingBagCollection(tables=spec.tables(), device=device))
        self.dense_arch = DenseArch(spec.n_dense, [*spec.bottom_mlp, d])
        n_f = len(spec.sparse)
        if spec.interaction == "dot":
            self.interaction: nn.Module = InteractionArch(num_sparse_features=n_f)
            inter_out = d + (n_f + 1) * n_f // 2
        else:
            cross = LowRankCrossNet(
                in_features=(n_f + 1) * d, num_layers=spec.dcn_layers, low_rank=spec.dcn_rank
            )
            self.interaction = InteractionDCNArch(num_sparse_features=n_f, crossnet=cross)
            inter_out = (n_f + 1) * d
        self.shared = MLP(inter_out, list(spec.top_mlp))
        self.heads = nn.ModuleDict({t: nn.Linear(spec.top_mlp[-1], 1) for t in spec.tasks})
        # Wide & Deep (Cheng et al. 2016): the dense features also reach the logits through one linear
        # layer, so what a logistic regression learns from them is never lost in the bottom MLP's
        # D-wide bottleneck; the deep part learns the interactions on top.
        self.wide = nn.Linear(spec.n_dense, len(spec.tasks), bias=False) if spec.wide else None
        if self.wide is not None:
            nn.init.zeros_(self.wide.weight)
        # Position bias: learned next to, not inside, the main network, so that serving without it shifts
        # every item's logit equally instead of changing their order. No intercept: the top slot
        # (log1p(0) = 0) adds nothing, so leaving the tower out *is* scoring every item at the top slot.
        self.bias_tower = nn.Linear(spec.n_bias, len(spec.tasks), bias=False) if spec.n_bias else None

    def init_heads(self, base_rates: dict[str, float]) -> None:
        """Start each binary head at its task's base rate (``sigmoid(bias) = rate``) instead of 0.5.

        With rare labels (comments, shares, hides: ~1%) a head starting at 0.5 spends its first steps
        pushing every logit down through the shared layers; measured over seeds, the ranker ended
        miscalibrated by a seed-dependent amount (click RCE 9.7–16.6 %) and hide went wrong at the top slot.

        >>> spec = RankerSpec(sparse={"sp_viewer": 3}, n_dense=1, bottom_mlp=(4,), top_mlp=(4,))
        >>> m = MultiTaskRanker(spec)
        >>> m.init_heads({"hide": 0.01})
        >>> round(float(torch.sigmoid(m.heads["hide"].bias)), 4)
        0.01
        """
        with torch.no_grad():
            for task, rate in base_rates.items():
                head = self.heads[task] if task in self.heads and task in BINARY_TASKS else None
                if isinstance(head, nn.Linear) and head.bias is not None:
                    p = min(max(rate, 1e-6), 1 - 1e-6)
                    head.bias.fill_(math.log(p / (1 - p)))

    def set_standardization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Dense inputs are standardized inside the model, so serving feeds raw feature values. A column
        (near-)constant in training keeps its scale (std 1): dividing by its tiny std sent a value it never
        took in training (a 1-hour comment counter, 0 in a small train split) to ~1e6 and the logits with
        it."""
        self.dense_mean.copy_(mean)
        self.dense_std.copy_(safe_std(std))

    def forward(
        self, dense: torch.Tensor, sparse: KeyedJaggedTensor, bias: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``bias`` (B, n_bias): training-time bias inputs (log position); None at serving."""
        z = (dense - self.dense_mean) / self.dense_std
        x = self.dense_arch(z)
        emb = self.sparse_arch(sparse)
        shared = self.shared(self.interaction(x, emb))
        logits = torch.cat([head(shared) for head in self.heads.values()], dim=1)  # (B, tasks)
        if self.wide is not None:
            logits = logits + self.wide(z)
        if bias is not None and self.bias_tower is not None:
            logits = logits + self.bias_tower(bias)
        return {t: logits[:, i] for i, t in enumerate(self.heads)}


def safe_std(std: torch.Tensor, floor: float = 1e-3) -> torch.Tensor:
    """Standard deviations to divide by: those under ``floor`` (a constant column) become 1.

    >>> safe_std(torch.tensor([2.0, 0.0, 1e-6])).tolist()
    [2.0, 1.0, 1.0]
    """
    return torch.where(std < floor, torch.ones_like(std), std)


def probabilities(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Binary logits → probabilities; dwell → expected milliseconds."""
    out = {t: torch.sigmoid(v) for t, v in outputs.items() if t in BINARY_TASKS}
    if "dwell" in outputs:
        out["dwell"] = torch.expm1(outputs["dwell"].clamp(min=0)) * 1000.0
    return out
