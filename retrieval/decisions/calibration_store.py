"""Calibrations of an index: one threshold per model (and its precision levels), never applied to another model.
The index writes and reads them; this names the model by its content."""

from __future__ import annotations

from retrieval.index import SimilarityIndex
from retrieval.models.model import EmbeddingModel
from retrieval.store.records import StoredCalibration


def save_calibration(index: SimilarityIndex, model: EmbeddingModel, criterion: str, threshold: float,
                     metrics: dict[str, object]) -> StoredCalibration:
    """Record a calibration of `model` (registering the model in the index if it is new there)."""
    return index.save_calibration(model, criterion, threshold, metrics)


def latest_calibration(index: SimilarityIndex, model_hash: str) -> StoredCalibration | None:
    """The most recent calibration of the model with this content hash, if any."""
    return index.latest_calibration(model_hash)
