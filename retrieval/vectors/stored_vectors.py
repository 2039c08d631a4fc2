"""Some of an index's stored vectors as a `retrieval.vectors.partitioned_pairs.VectorSource`: read from the database a
block of ids at a time (never all at once), and again by row for the pairs to decide."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

READ_ROWS = 8_192
"""Vectors a read brings (40 MiB at 1,280 dimensions)."""
SPARSE = 4
"""A block whose ids span more than this many times its rows (vectors of other models between) is read by id."""


class VectorRows(Protocol):
    """Where the vectors are read from (an index, `retrieval.index.SimilarityIndex`)."""

    def vectors_between(self, first: int, last: int, dim: int) -> tuple[np.ndarray, np.ndarray]: ...

    def vectors_of(self, ids: Sequence[int], dim: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class StoredVectors:
    """The vectors `ids` (sorted database ids) of `source`, row i being `ids[i]`."""

    source: VectorRows
    ids: np.ndarray
    dim: int

    @property
    def count(self) -> int:
        return len(self.ids)

    def chunks(self) -> Iterator[np.ndarray]:
        for start in range(0, self.count, READ_ROWS):
            wanted = self.ids[start:start + READ_ROWS]
            if wanted[-1] - wanted[0] >= SPARSE * len(wanted):
                yield self.rows(np.arange(start, start + len(wanted)))
                continue
            found, vectors = self.source.vectors_between(int(wanted[0]), int(wanted[-1]), self.dim)
            yield vectors[np.searchsorted(found, wanted)]

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Read `READ_ROWS` at a time: the database's rows for many at once would take several times their room."""
        vectors = np.empty((len(rows), self.dim), np.float32)
        for start in range(0, len(rows), READ_ROWS):
            wanted = self.ids[rows[start:start + READ_ROWS]]
            found, block = self.source.vectors_of(wanted.tolist(), self.dim)
            order = np.argsort(found)
            vectors[start:start + len(wanted)] = block[order[np.searchsorted(found[order], wanted)]]
        return vectors
