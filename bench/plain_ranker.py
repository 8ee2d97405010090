"""The ranker written with plain PyTorch (``nn.EmbeddingBag``, no TorchRec), for the speed comparison.

Same shapes as :class:`models.ranker.MultiTaskRanker`: one bag per sparse feature (sum, or mean for
multi-valued ones), bottom MLP to D, the interaction (``dot``: pairwise dot products of the F+1 vectors;
``dcn``: DCNv2's low-rank cross layers over their concatenation, ``x_{l+1} = x_0 * (U_l V_l x_l + b_l) +
x_l``), shared top MLP, one linear head per task, a linear position-bias tower. It trains with the same
:class:`models.train_wrapper.RankerTrainWrapper` losses; replicated tables (DDP) instead of sharded ones.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torchrec import KeyedJaggedTensor

from models.ranker import RankerSpec


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)


class PlainRanker(nn.Module):
    """``forward(dense, sparse, bias)`` as :class:`models.ranker.MultiTaskRanker`'s; each feature of the
    ``KeyedJaggedTensor`` feeds its bag as values and offsets (length B + 1)."""

    dense_mean: torch.Tensor
    dense_std: torch.Tensor
    pairs: torch.Tensor

    def __init__(self, spec: RankerSpec) -> None:
        super().__init__()
        self.spec = spec
        d = spec.embedding_dim
        self.register_buffer("dense_mean", torch.zeros(spec.n_dense))
        self.register_buffer("dense_std", torch.ones(spec.n_dense))
        self.bags = nn.ModuleDict(
            {
                name: nn.EmbeddingBag(
                    rows, d, mode="mean" if name in spec.mean_pooled else "sum", include_last_offset=True
                )
                for name, rows in spec.sparse.items()
            }
        )
        self.bottom = _mlp([spec.n_dense, *spec.bottom_mlp, d])
        n = len(spec.sparse) + 1
        self.register_buffer("pairs", torch.triu_indices(n, n, offset=1), persistent=False)
        width = n * d
        layers, rank = range(spec.dcn_layers), spec.dcn_rank
        self.cross_v = nn.ModuleList(nn.Linear(width, rank, bias=False) for _ in layers)
        self.cross_u = nn.ModuleList(nn.Linear(rank, width) for _ in layers)
        self.top = _mlp([width if spec.interaction == "dcn" else d + n * (n - 1) // 2, *spec.top_mlp])
        self.heads = nn.ModuleDict({t: nn.Linear(spec.top_mlp[-1], 1) for t in spec.tasks})
        self.bias_tower = nn.Linear(spec.n_bias, len(spec.tasks)) if spec.n_bias else None

    def forward(
        self,
        dense: torch.Tensor,
        sparse: KeyedJaggedTensor,
        bias: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        x = self.bottom((dense - self.dense_mean) / self.dense_std)
        jagged = sparse.to_dict()
        embs = [bag(jagged[name].values(), jagged[name].offsets()) for name, bag in self.bags.items()]
        if self.spec.interaction == "dcn":
            x0 = xl = torch.cat([x, *embs], dim=1)  # (B, (F+1)·D)
            for v, u in zip(self.cross_v, self.cross_u, strict=True):
                xl = x0 * u(v(xl)) + xl
            shared = self.top(xl)
        else:
            stacked = torch.stack([x, *embs], dim=1)  # (B, F+1, D)
            dots = torch.bmm(stacked, stacked.transpose(1, 2))[:, self.pairs[0], self.pairs[1]]
            shared = self.top(torch.cat([x, dots], dim=1))
        out = {t: head(shared).squeeze(-1) for t, head in self.heads.items()}
        if bias is not None and self.bias_tower is not None:
            shift = self.bias_tower(bias)
            out = {t: v + shift[:, i] for i, (t, v) in enumerate(out.items())}
        return out
