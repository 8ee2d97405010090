"""The evaluation's artifacts: ``evaluation.json``, the quality table (``quality.md``), ROC and
reliability plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models.tasks import BINARY_TASKS
from pipelines.common.config import EvaluateConfig

if TYPE_CHECKING:
    from pipelines.evaluate.evaluation import Evaluation


# --------------------------------------------------------------------------------------------- outputs
def write_report(
    result: Evaluation,
    cols: dict[str, np.ndarray],
    preds: dict[str, dict[str, np.ndarray]],
    calibrated: dict[str, dict[str, np.ndarray]],
    probabilistic: dict[str, bool],
    cfg: EvaluateConfig,
    out_dir: Path,
) -> list[Path]:
    """``evaluation.json``, ``quality.md``, ``roc.png`` and ``calibration.png`` in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import roc_curve

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(json.dumps(result.to_json(), indent=2, allow_nan=True))
    (out_dir / "quality.md").write_text(result.table() + "\n")
    paths = [out_dir / "evaluation.json", out_dir / "quality.md"]
    for kind in ("roc", "calibration"):
        fig, axes = plt.subplots(2, 3, figsize=(13, 8))
        for ax, task in zip(axes.flat, BINARY_TASKS, strict=True):
            y = cols[task].astype(np.int64)
            for name, pred in preds.items():
                if y.min() == y.max() or (kind == "calibration" and not probabilistic[name]):
                    continue
                if kind == "roc":
                    fpr, tpr, _ = roc_curve(y, pred[task])
                    auc = result.models[name]["tasks"][task]["auc"]
                    ax.plot(fpr, tpr, label=f"{name} {auc:.3f}")
                else:
                    frac, mean = calibration_curve(
                        y,
                        np.clip(calibrated[name][task], 0, 1),
                        n_bins=cfg.calibration_bins,
                        strategy="quantile",
                    )
                    ece = result.models[name]["tasks"][task].get("ece", float("nan"))
                    ax.plot(mean, frac, marker=".", label=f"{name} ECE {ece:.3f}")
            lim = [0, 1] if kind == "roc" else [0, max(0.05, float(cols[task].mean()) * 3)]
            ax.plot(lim, lim, "k:", lw=0.8)
            ax.set_xlabel("false positive rate" if kind == "roc" else "predicted probability")
            ax.set_ylabel("true positive rate" if kind == "roc" else "observed frequency")
            if ax.get_legend_handles_labels()[0]:
                ax.set_title(task)
                ax.legend(fontsize=7)
            else:  # one class only in this split (a log without that label): nothing to draw
                ax.set_title(f"{task}: not evaluated")
        fig.suptitle(
            f"{'ROC' if kind == 'roc' else 'Reliability'} on the test split ({result.rows} impressions)"
        )
        fig.tight_layout()
        fig.savefig(out_dir / f"{kind}.png", dpi=90)
        plt.close(fig)
        paths.append(out_dir / f"{kind}.png")
    return paths
