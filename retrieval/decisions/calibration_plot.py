"""A PNG a person can open to judge a calibration: the two distance histograms with the threshold, and the ROC."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from retrieval.atomic import atomic_write
from retrieval.decisions.calibration import CalibrationResult
from retrieval.errors import OutputWriteError

PLOT_SUFFIX = ".png"


def check_plot_path(path: Path) -> None:
    """`OutputWriteError` unless `path` names a PNG: the one format written, so that a wrong name is refused
    before any work rather than after it all."""
    if path.suffix.lower() != PLOT_SUFFIX:
        raise OutputWriteError(f"cannot write the plot {path}: plots are PNG files, name it *{PLOT_SUFFIX}")


def write_calibration_plot(same: np.ndarray, different: np.ndarray, result: CalibrationResult, path: Path) -> None:
    """Histograms of same and different distances (shared bins) with the threshold; ROC curve with the
    operating point. Drawn with matplotlib's Agg canvas, so no display and no global pyplot state; written
    atomically (`OutputWriteError`, and nothing left, on a full disk)."""
    check_plot_path(path)
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
    png = io.BytesIO()
    figure.savefig(png, format="png")

    def write(temporary: Path) -> None:
        temporary.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_bytes(png.getbuffer())

    atomic_write(path, write, "plot")
