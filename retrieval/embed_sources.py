"""Decode and embed files or encoded images in memory, each input getting its vector or its error.

This is the library's one decode-and-embed call, for whoever embeds a handful of inputs at a time: a query, the
Python API's decisions, a server's uploads. Its inputs and outputs are plain data (a path or bytes in; a float32
vector or an error message out), so they can cross a process boundary. Inputs are decoded in this process and
embedded in batches of `batch_size` on the embedder's device; a path that is not a readable regular file (a
folder, a FIFO) is never opened. (`simsearch index` runs the same decoding in worker processes ahead of
inference: `indexer/`.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from retrieval.embedding import Embedder
from retrieval.errors import DecodeError
from retrieval.images import DEFAULT_MAX_PIXELS, decode_image
from retrieval.inputs import unreadable_reason

BATCH_SIZE = 32


@dataclass(frozen=True)
class Embedded:
    """One input's L2-normalised vector, or why it has none."""

    vector: np.ndarray | None
    error: str | None = None


def embed_sources(embedder: Embedder, sources: Sequence[Path | bytes], max_pixels: int = DEFAULT_MAX_PIXELS,
                  batch_size: int = BATCH_SIZE) -> list[Embedded]:
    """The embedding of each source, in order: a path to an image file, or the bytes of an encoded image."""
    results: list[Embedded | None] = [None] * len(sources)
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        vectors = embedder.embed(torch.from_numpy(np.stack([pixels for _, pixels in pending])))
        for (position, _), vector in zip(pending, vectors, strict=True):
            results[position] = Embedded(vector)
        pending.clear()

    for position, source in enumerate(sources):
        reason = None if isinstance(source, bytes) else unreadable_reason(source)
        if reason is not None:
            results[position] = Embedded(None, reason)
            continue
        try:
            pending.append((position, decode_image(source, embedder.model.preprocessing, max_pixels).pixels))
        except DecodeError as exc:
            results[position] = Embedded(None, str(exc))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return [result for result in results if result is not None]
