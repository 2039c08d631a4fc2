"""The plain data an index's database takes and gives: what a caller outside the store sees of its rows. No ORM
row, session or status string leaves the store; these frozen values do."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from retrieval.decisions.calibration import levels_from_dicts
from retrieval.models.model_spec import PrecisionLevel
from retrieval.store.schema import STATUS_ERROR, STATUS_OK


class Unset(enum.Enum):
    """A keyword argument not given (None means something: back to the default)."""

    UNSET = enum.auto()


UNSET = Unset.UNSET


@dataclass(frozen=True)
class ModelInfo:
    """A model the index holds vectors of."""

    id: int
    content_hash: str
    name: str
    spec: str
    """Its `ModelSpec` as JSON."""
    embedding_dim: int
    created_at: datetime


@dataclass(frozen=True)
class ModelFile:
    """A model's file as the database holds it: its bytes and the SHA-256 they were stored with."""

    content_hash: str
    sha256: str
    data: bytes


@dataclass(frozen=True)
class ServedState:
    """What the database serves, read in one snapshot: its id, its generation, the served model (None before the
    first) and the user's vector-index settings."""

    database_id: str
    generation: int
    model: ModelInfo | None
    index_type: str | None
    max_memory: int | None
    target_recall: float | None


class IndexedImage(NamedTuple):
    """One indexed image (a tuple, so a caller going through many unpacks it cheaply)."""

    path: str
    width: int | None
    height: int | None
    mtime_ns: int | None
    vector_id: int
    id: int
    file_id: str | None
    size: int | None
    content_hash: str | None


@dataclass(frozen=True)
class KnownImage:
    """What the database holds about one path."""

    id: int
    path: str
    size: int | None
    mtime_ns: int | None
    content_hash: str | None
    status: str
    has_target_vector: bool
    file_id: str | None = None
    label: str | None = None
    width: int | None = None
    height: int | None = None
    error: str | None = None

    @property
    def indexed(self) -> bool:
        """Whether the path is indexed (it has a vector)."""
        return self.status == STATUS_OK

    @property
    def failed(self) -> bool:
        """Whether the path failed to index (its `error` says why)."""
        return self.status == STATUS_ERROR


@dataclass(frozen=True)
class ImageChange:
    """The new state of one image row: the row `row_id`, or the row at `path` (made if there is none).

    An indexed image (`status` ok) points at the vector of `vector_hash` for the model being written, which
    must be stored already or come in the same `write_images` call; with `keep_vector` it keeps the vector it has
    (while another model's vectors are being written, the served one stays until the switch). `indexed` and
    `failed` make one without naming a status.
    """

    path: str
    status: str
    row_id: int | None = None
    file_id: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    label: str | None = None
    content_hash: str | None = None
    width: int | None = None
    height: int | None = None
    error: str | None = None
    vector_hash: str | None = None
    keep_vector: bool = False

    @classmethod
    def indexed(cls, path: str, **fields: object) -> ImageChange:
        return cls(path, STATUS_OK, **fields)  # type: ignore[arg-type]

    @classmethod
    def failed(cls, path: str, **fields: object) -> ImageChange:
        return cls(path, STATUS_ERROR, **fields)  # type: ignore[arg-type]


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


@dataclass(frozen=True)
class CopySummary:
    """Rows copied, by table."""

    models: int
    vectors: int
    images: int
    calibrations: int
    decisions: int = 0
