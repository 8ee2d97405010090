"""The prediction tasks and their default loss weights: plain constants, importable without torch."""

from __future__ import annotations

from typing import Final

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
