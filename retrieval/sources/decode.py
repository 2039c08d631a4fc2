"""Read, hash and decode one input for a model (no torch here: the index's head start runs this before torch loads)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.errors import DecodeError
from retrieval.sources.content_hash import hash_bytes
from retrieval.sources.images import Preprocessing, decode_image
from retrieval.sources.inputs import unreadable_reason


@dataclass(frozen=True)
class Source:
    """One input: the path of an image file or the bytes of an encoded image. `key` is the caller's, to match the
    result to what it asked for; `content_hash`, where the caller knows it already, saves hashing again."""

    key: int
    path: str | None = None
    data: bytes | None = None
    content_hash: str | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise ValueError("a source is a path or bytes, exactly one of them")


@dataclass(frozen=True)
class SourceResult:
    """What became of one `Source`: its SHA-256 and size once read and decoded, the L2-normalised float32 vector
    once embedded; otherwise `error` says why (and `content_hash` is kept if the data could be read)."""

    key: int
    content_hash: str | None
    width: int | None = None
    height: int | None = None
    error: str | None = None
    vector: np.ndarray | None = None


Decoded = tuple[SourceResult, np.ndarray | None]
"""An input's result so far and its model-ready pixels (H, W, C) uint8, None when it could not be decoded."""


def decode_source(source: Source, prep: Preprocessing, max_pixels: int) -> Decoded:
    """Read (a path that is not a readable regular file, a FIFO say, is never opened), hash and decode `source`."""
    if source.data is not None:
        data = source.data
    else:
        assert source.path is not None
        reason = unreadable_reason(Path(source.path))
        if reason is not None:
            return SourceResult(source.key, None, error=reason), None
        try:
            data = Path(source.path).read_bytes()
        except OSError as exc:
            return SourceResult(source.key, None, error=exc.strerror or str(exc)), None
    content_hash = source.content_hash or hash_bytes(data)
    if not data:
        return SourceResult(source.key, content_hash, error="empty file"), None
    try:
        decoded = decode_image(data, prep, max_pixels, name=source.path)
    except DecodeError as exc:
        return SourceResult(source.key, content_hash, error=str(exc)), None
    return SourceResult(source.key, content_hash, decoded.width, decoded.height), decoded.pixels
