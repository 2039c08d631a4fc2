"""Calibrating a model for an index, as `simsearch calibrate` does: which index and model, then the threshold
chosen from measured pairs, its plot drawn and the calibration stored in the index (made if there is none yet)."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.collection import Collection
from retrieval.decisions.calibration import CalibrationResult, Criterion, calibrate
from retrieval.decisions.calibration_plot import write_calibration_plot
from retrieval.index import SimilarityIndex, open_index
from retrieval.locate import find_index_dir, index_dir_for_writing
from retrieval.models.model import EmbeddingModel, load_default_model
from retrieval.new_index import index_to_fill


@dataclass(frozen=True)
class StoredCalibrationRun:
    """A calibration chosen and stored: its result, the index that holds it, the plot drawn."""

    result: CalibrationResult
    index_root: Path
    plot: Path


def existing_index(index_dir: Path | None, db: str | None) -> SimilarityIndex | None:
    """The index at `index_dir` (found as `retrieval.locate` finds it), if there is one yet. Nothing is created
    here, so bad data leaves no trace."""
    root = find_index_dir(index_dir)
    return open_index(root, db) if root is not None and root.exists() else None


def calibration_collection(index: SimilarityIndex | None, model: EmbeddingModel | None,
                           device: str | None = None) -> Collection:
    """The index (or None) and the model to calibrate: `model`, else the index's, else the default."""
    return Collection(index, load_default_model() if index is None and model is None else model, device)


def calibrate_and_store(collection: Collection, same: np.ndarray, different: np.ndarray, criterion: Criterion,
                        target_fpr: float | None, *, bootstrap: int, seed: int, plot: Path | None,
                        index_dir: Path | None, db: str | None) -> StoredCalibrationRun:
    """Choose the threshold of `collection`'s model from the distances of `same` and `different` pairs
    (`retrieval.decisions.calibration.calibrate`), draw them to `plot` (default: the index's `calibration_plot_path`)
    and store the calibration in the collection's index, or in a new one at `index_dir` (`db`), which is removed again
    when the plot or the calibration cannot be written."""
    model = collection.model
    result = calibrate(same, different, criterion, target_fpr, bootstrap=bootstrap, seed=seed)
    with (nullcontext(collection.index) if collection.index is not None
          else index_to_fill(index_dir_for_writing(index_dir), db)) as index:
        plot = plot or index.calibration_plot_path(model.content_hash)
        write_calibration_plot(same, different, result, plot)
        index.save_calibration(model, criterion, result.threshold, result.to_dict())
    return StoredCalibrationRun(result, index.root, plot)
