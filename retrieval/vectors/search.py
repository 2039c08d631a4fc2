"""Query an index with image files that need not be in it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.index import Neighbour, SimilarityIndex
from retrieval.models.embedding import Embedder
from retrieval.sources.embed import embed_sources
from retrieval.sources.images import DEFAULT_MAX_PIXELS
from retrieval.sources.inputs import k_argument, path_arguments


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
    embedded = embed_sources(embedder, files, max_pixels)
    decoded = [i for i, item in enumerate(embedded) if item.vector is not None]
    found: dict[int, list[Neighbour]] = {}
    if decoded:
        vectors = np.stack([embedded[i].vector for i in decoded])  # type: ignore[misc]
        found = dict(zip(decoded, index.search(vectors, k)))
    return [QueryResult(str(path), found.get(i, []), embedded[i].error) for i, path in enumerate(files)]
