"""A PNG a person can open to judge a calibration: the two distance histograms with the threshold, and the ROC."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retrieval.calibration import CalibrationResult
from retrieval.errors import writing_output


def write_calibration_plot(same: np.ndarray, different: np.ndarray, result: CalibrationResult, path: Path) -> None:
    """Histograms of same and different distances (shared bins) with the threshold; ROC curve with the
    operating point. Drawn with matplotlib's Agg canvas, so no display and no global pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    hist, roc = figure.subplots(1, 2)
    bins = np.linspace(0.0, max(float(np.max(same)), float(np.max(different))) * 1.02 + 1e-9, 60)
    hist.hist(different, bins=bins, density=True, alpha=0.55, label=f"different ({len(different):,} pairs)")
    hist.hist(same, bins=bins, density=True, alpha=0.55, label=f"same ({len(same):,} pairs)")
    hist.axvline(result.threshold, color="black", linestyle="--", label=f"threshold {result.threshold:.4f}")
    hist.set_xlabel("squared L2 distance")
    hist.set_ylabel("density")
    hist.set_title(f"distances (threshold by {result.criterion}; accuracy {result.accuracy:.3f})")
    hist.legend()

    thresholds = np.unique(np.concatenate([[-1.0], same, different]))
    tpr = np.searchsorted(np.sort(same), thresholds, side="right") / len(same)
    fpr = np.searchsorted(np.sort(different), thresholds, side="right") / len(different)
    roc.plot(fpr, tpr, label="ROC")
    roc.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
    roc.scatter([result.fpr], [result.tpr], color="black", zorder=3,
                label=f"threshold: TPR {result.tpr:.3f}, FPR {result.fpr:.4f}")
    roc.set_xlabel("false-positive rate")
    roc.set_ylabel("true-positive rate")
    roc.set_title(f"ROC (AUC {result.roc_auc:.4f})")
    roc.legend(loc="lower right")
    figure.tight_layout()
    with writing_output("plot", path):
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
