"""The prediction tasks and their default loss weights: plain constants, importable without torch."""

from __future__ import annotations

from typing import Any, Final

BINARY_TASKS: Final = ("click", "like", "comment", "share", "hide", "skip")
REGRESSION_TASKS: Final = ("dwell",)
TASKS: Final = BINARY_TASKS + REGRESSION_TASKS

#: Loss weight per task; skip and dwell are dense signals and would otherwise dominate.
DEFAULT_TASK_WEIGHTS: Final = {
    "click": 1.0,
    "like": 1.0,
    "comment": 1.0,
    "share": 1.0,
    "hide": 1.0,
    "skip": 0.5,
    "dwell": 0.5,
}

#: The value model that orders the feed: a weighted sum of per-task predictions (dwell in seconds).
#: Negative weights demote what people hide or skip. Serving and offline evaluation use the same one.
DEFAULT_VALUE_WEIGHTS: Final = {
    "click": 1.0,
    "like": 2.0,
    "comment": 4.0,
    "share": 4.0,
    "hide": -10.0,
    "skip": -0.5,
    "dwell": 0.02,
}

#: Graded relevance of what a person actually did with an impression (for NDCG / MRR offline).
DEFAULT_RELEVANCE: Final = {"click": 1, "like": 2, "comment": 3, "share": 3}


def value_score(pred: dict[str, Any], weights: dict[str, float]) -> Any:
    """Weighted sum of per-task predictions (arrays or tensors of equal shape); dwell given in ms.

    >>> import numpy as np
    >>> value_score({"click": np.array([0.5]), "dwell": np.array([2000.0])}, {"click": 1.0, "dwell": 0.5})
    array([1.5])
    """
    total: Any = 0.0
    for task, w in weights.items():
        if w:
            total = total + w * (pred[task] / 1000.0 if task == "dwell" else pred[task])
    return total
