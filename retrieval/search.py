"""Query an index with image files that need not be in it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from retrieval.embedding import Embedder
from retrieval.errors import DecodeError
from retrieval.images import DEFAULT_MAX_PIXELS, decode_image
from retrieval.index import Neighbour, SimilarityIndex
from retrieval.inputs import k_argument, path_arguments, unreadable_reason


@dataclass(frozen=True)
class QueryResult:
    """The neighbours of one query file, or why it could not be queried."""

    query: str
    neighbours: list[Neighbour]
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"query": self.query, "error": self.error, "neighbours": [n.to_dict() for n in self.neighbours]}


def query_files(index: SimilarityIndex, embedder: Embedder, paths: Sequence[Path | str], k: int,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> list[QueryResult]:
    """Decode, embed (in one batch) and search each file; a file that fails carries its error."""
    files = [Path(path) for path in path_arguments(paths)]
    k = k_argument(k)
    decoded: dict[int, np.ndarray] = {}
    errors: dict[int, str] = {}
    for i, path in enumerate(files):
        reason = unreadable_reason(path)
        if reason is not None:
            errors[i] = reason
            continue
        try:
            decoded[i] = decode_image(path, embedder.model.preprocessing, max_pixels).pixels
        except DecodeError as exc:
            errors[i] = str(exc)
    found: dict[int, list[Neighbour]] = {}
    if decoded:
        order = sorted(decoded)
        vectors = embedder.embed(torch.from_numpy(np.stack([decoded[i] for i in order])))
        found = dict(zip(order, index.search(vectors, k)))
    return [QueryResult(str(path), found.get(i, []), errors.get(i)) for i, path in enumerate(files)]
