"""Training wrapper: losses stay out of the servable :class:`~models.ranker.MultiTaskRanker`.

Per task: binary cross-entropy on the logit (optional ``pos_weight`` for rare positives) and, for dwell, a
Huber loss on ``log1p(dwell seconds)`` — robust to the heavy tail of long views. Every loss is a
``sample_weight``-weighted mean, so downsampled negatives count as many times as they stood for.
Tasks combine with fixed weights or learned ones (homoscedastic uncertainty, Kendall et al. 2018:
``L = Σ exp(-s_t) L_t + s_t`` with one learned ``s_t`` per task).

Like torchrec's ``DLRMTrain``, the wrapper takes one batch (a :class:`models.batch.Batch`), so TorchRec's
``DistributedModelParallel`` around it is called as ``dmp(batch)``.

Example::

    >>> import torch
    >>> from torchrec import KeyedJaggedTensor
    >>> from models.batch import Batch
    >>> from models.ranker import MultiTaskRanker, RankerSpec
    >>> model = MultiTaskRanker(RankerSpec(sparse={"sp_viewer": 10}, n_dense=3, embedding_dim=4,
    ...                                    bottom_mlp=(8,), top_mlp=(8,)))
    >>> wrapper = RankerTrainWrapper(model, LossSpec())
    >>> kjt = KeyedJaggedTensor.from_lengths_sync(keys=["sp_viewer"], values=torch.tensor([1, 2]),
    ...                                            lengths=torch.tensor([1, 1]))
    >>> labels = {t: torch.tensor([0.0, 1.0]) for t in ("click", "like", "comment", "share", "hide", "skip")}
    >>> labels["dwell"] = torch.tensor([1200.0, 300.0])
    >>> loss, (losses, outputs) = wrapper(Batch(torch.randn(2, 3), kjt, labels, torch.ones(2)))
    >>> sorted(losses)[:3], loss.ndim
    (['loss/click', 'loss/comment', 'loss/dwell'], 0)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models.batch import Batch
from models.ranker import MultiTaskRanker
from models.tasks import BINARY_TASKS, DEFAULT_TASK_WEIGHTS


@dataclass(frozen=True)
class LossSpec:
    """How per-task losses combine (built from the config by ``LossSettings.to_spec()``)."""

    task_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TASK_WEIGHTS))
    pos_weight: dict[str, float] = field(default_factory=dict)  # task → BCE pos_weight
    learned_weights: bool = False  # uncertainty weighting instead of task_weights
    #: Tasks the data cannot teach (no positive in train; dwell and skip when no dwell was logged): their
    #: heads are kept, their losses count for nothing.
    skipped: tuple[str, ...] = ()
    huber_delta: float = 1.0


def dwell_target(dwell_ms: torch.Tensor) -> torch.Tensor:
    """The regression target: ``log1p(dwell seconds)``."""
    return torch.log1p(dwell_ms.clamp(min=0) / 1000.0)


class RankerTrainWrapper(nn.Module):
    """``forward(batch) -> (loss, (losses, outputs))``.

    ``batch.labels`` maps every task to a (B,) float tensor (dwell in milliseconds); ``batch.weights`` is
    (B,); ``batch.bias`` (the logged position) feeds the position-bias tower when present.
    ``losses`` has ``loss/<task>`` for each task and ``loss/total``.
    """

    fixed_weights: torch.Tensor
    active: torch.Tensor  # 1 per task, 0 for the skipped ones

    def __init__(self, model: MultiTaskRanker, spec: LossSpec) -> None:
        super().__init__()
        self.model = model
        self.spec = spec
        tasks = model.spec.tasks
        self.log_vars = nn.Parameter(torch.zeros(len(tasks))) if spec.learned_weights else None
        self.register_buffer(
            "fixed_weights",
            torch.tensor([spec.task_weights.get(t, 1.0) for t in tasks], dtype=torch.float32),
        )
        self.register_buffer(  # not in the state dict: a checkpoint resumes whatever the data now allows
            "active",
            torch.tensor([0.0 if t in spec.skipped else 1.0 for t in tasks], dtype=torch.float32),
            persistent=False,
        )

    def forward(
        self, batch: Batch
    ) -> tuple[torch.Tensor, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
        outputs = self.model(batch.dense, batch.sparse, batch.bias)
        weights, labels = batch.weights, batch.labels
        norm = weights.sum().clamp_min(1e-9)
        per_task = []
        losses: dict[str, torch.Tensor] = {}
        for task in self.model.spec.tasks:
            pred = outputs[task]
            if task in BINARY_TASKS:
                pw = self.spec.pos_weight.get(task)
                raw = F.binary_cross_entropy_with_logits(
                    pred,
                    labels[task],
                    reduction="none",
                    pos_weight=None if pw is None else torch.tensor(pw, dtype=pred.dtype),
                )
            else:
                raw = F.huber_loss(
                    pred, dwell_target(labels[task]), reduction="none", delta=self.spec.huber_delta
                )
            loss_t = (raw * weights).sum() / norm
            losses[f"loss/{task}"] = loss_t.detach()
            per_task.append(loss_t)
        stacked = torch.stack(per_task) * self.active
        if self.log_vars is not None:
            total = ((torch.exp(-self.log_vars) * stacked + self.log_vars) * self.active).sum()
        else:
            total = (self.fixed_weights * stacked).sum()
        losses["loss/total"] = total.detach()
        return total, (losses, outputs)
