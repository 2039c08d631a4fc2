"""simsearch library core: encoders, losses, storage, search, calibration and metrics.

The Python API is `open_collection` (see `retrieval.collection`) and, for a data pipeline's batches,
`Deduplicator` (see `retrieval.decisions.deduplicator`); each is imported on first use, so that importing this package
stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULES = {"Collection": "collection", "open_collection": "collection", "Deduplicator": "decisions.deduplicator"}
__all__ = list(_MODULES)


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return getattr(importlib.import_module(f"retrieval.{_MODULES[name]}"), name)
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
