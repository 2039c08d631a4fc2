"""simsearch library core: encoders, losses, storage, search, calibration and metrics.

The Python API is `open_collection` (see `retrieval.collection`); it is imported on first use, so that importing
this package stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Collection", "open_collection"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from retrieval import collection

        return getattr(collection, name)
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
