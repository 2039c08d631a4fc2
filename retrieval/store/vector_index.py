"""The FAISS index over stored vectors, and its file.

Vectors are L2-normalised, so an inner-product index gives exact cosine neighbours; their scores are reported
as the squared L2 distance of `retrieval.unit_distance`.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from retrieval.atomic import atomic_write
from retrieval.errors import IndexUnavailableError
from retrieval.faiss_factory import EXACT, new_faiss_index
from retrieval.unit_distance import squared_l2_from_scores


class VectorIndex:
    """Exact nearest neighbours by inner product, keyed by the `vectors.id` of the database."""

    def __init__(self, index: faiss.Index) -> None:
        self._index = index

    @classmethod
    def build(cls, dim: int, ids: np.ndarray, vectors: np.ndarray) -> VectorIndex:
        index = new_faiss_index(dim, EXACT, ids=True)
        if len(ids):
            index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
        return cls(index)

    @classmethod
    def load(cls, path: Path) -> VectorIndex:
        try:
            return cls(faiss.read_index(str(path)))
        except RuntimeError as exc:
            raise IndexUnavailableError(f"cannot read vector file {path}: {str(exc).splitlines()[0]}") from exc

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    def save(self, path: Path) -> None:
        """Write atomically: a reader sees the old file or the new one, never a torn one; `OutputWriteError`."""
        def write(target: Path) -> None:
            try:
                faiss.write_index(self._index, str(target))
            except RuntimeError as exc:  # faiss reports a failed write (a full disk) as RuntimeError
                raise OSError(str(exc).splitlines()[0]) from exc

        atomic_write(path, write, "vector file")

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Squared L2 distances and vector ids of the `k` nearest, nearest first; id -1 pads."""
        k = min(k, len(self))
        if k == 0:
            empty = np.empty((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        scores, ids = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return squared_l2_from_scores(scores), ids
