"""Read, hash and decode one file for a model (no torch here: `indexer.head_start` runs it before torch loads)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.hashing import hash_bytes
from indexer.plan import Work
from retrieval.errors import DecodeError
from retrieval.images import Preprocessing, decode_image


@dataclass(frozen=True)
class Loaded:
    """One file after decoding: its size on success, the reason otherwise."""

    work: Work
    content_hash: str | None
    width: int | None = None
    height: int | None = None
    error: str | None = None


Decoded = tuple[Loaded, np.ndarray | None]
"""A file and its model-ready pixels (None when it could not be decoded)."""


def load_file(work: Work, prep: Preprocessing, max_pixels: int) -> Decoded:
    try:
        data = Path(work.file.path).read_bytes()
    except OSError as exc:
        return Loaded(work, None, error=exc.strerror or str(exc)), None
    content_hash = work.content_hash or hash_bytes(data)
    if not data:
        return Loaded(work, content_hash, error="empty file"), None
    try:
        decoded = decode_image(data, prep, max_pixels)
    except DecodeError as exc:
        return Loaded(work, content_hash, error=str(exc)), None
    return Loaded(work, content_hash, decoded.width, decoded.height), decoded.pixels
