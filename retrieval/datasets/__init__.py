"""Readers that turn the shared image datasets into in-memory tensors."""

from retrieval.datasets.omniglot import (
    CharacterSet,
    DatasetFormatError,
    DatasetNotFoundError,
    LakeRun,
    datasets_root,
    load_characters,
    load_lake_runs,
)

__all__ = [
    "CharacterSet",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "LakeRun",
    "datasets_root",
    "load_characters",
    "load_lake_runs",
]
