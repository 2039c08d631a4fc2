"""Calibrations in the index database: one threshold per model (and its precision levels), never applied to
another model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from retrieval.calibration import levels_from_dicts
from retrieval.index import SimilarityIndex
from retrieval.model import EmbeddingModel
from retrieval.model_spec import PrecisionLevel
from retrieval.store.schema import CalibrationRecord, ModelRecord


@dataclass(frozen=True)
class StoredCalibration:
    model_hash: str
    criterion: str
    threshold: float
    metrics: dict[str, object]
    created_at: datetime

    @property
    def levels(self) -> tuple[PrecisionLevel, ...]:
        """The thresholds at precision levels in its metrics (none in a calibration stored before they were)."""
        return levels_from_dicts(self.metrics.get("levels", ()))  # type: ignore[arg-type]


def save_calibration(index: SimilarityIndex, model: EmbeddingModel, criterion: str, threshold: float,
                     metrics: dict[str, object]) -> StoredCalibration:
    """Record a calibration of `model` (registering the model in the index if it is new there)."""
    with index.writing() as session:
        record = index.register_model(session, model)
        row = CalibrationRecord(model_id=record.id, criterion=criterion, threshold=threshold,
                                metrics=json.dumps(metrics, sort_keys=True))
        session.add(row)
        session.flush()
        return StoredCalibration(model.content_hash, criterion, threshold, metrics, row.created_at)


def latest_calibration(index: SimilarityIndex, model_hash: str) -> StoredCalibration | None:
    """The most recent calibration of the model with this content hash, if any."""
    with index.sessions() as session:
        row = session.execute(
            select(CalibrationRecord).join(ModelRecord, CalibrationRecord.model_id == ModelRecord.id)
            .where(ModelRecord.content_hash == model_hash)
            .order_by(CalibrationRecord.created_at.desc(), CalibrationRecord.id.desc()).limit(1)
        ).scalar_one_or_none()
        if row is None:
            return None
        return StoredCalibration(model_hash, row.criterion, row.threshold, json.loads(row.metrics), row.created_at)
