"""Every pair within a threshold over a collection too large to compare whole: cell by cell, in bounded memory.

SemDeDup's way (Abbas et al. 2023), with the cells' borders searched too: k-means on a random sample splits the
collection into cells; each vector lives in the cell of its nearest centroid and also visits the `probes` next
nearest cells, where it is compared with every vector that lives there. A pair is found when both lie in one
cell, or one lies in a cell the other visits. Cells are assigned in a PCA projection of the vectors
(`PCA_DIMENSIONS`), which is where the k-means also runs; every distance that decides a pair is the full one.

Why the nearest cells and not an exact bound: by the triangle inequality on L2 (not squared), a vector x whose
centroid is at r from it can have a neighbour within L2 distance s only in a cell whose centroid lies within
r + 2s of x. At a threshold of 0.667 (s = 0.82) on 1,280-d embeddings that bound takes in nearly every cell, so
an exact partitioned search would be all-pairs again; the nearest cells find almost every pair at a fraction of
the work, and what they miss is measured: `sampled_recall` compares them with exact search for a random sample of
vectors, and `docs/decisions.md` says what that figure means.

Memory and work: the vectors are held as bfloat16 (2 bytes a dimension: 2.4 GiB at 1M x 1,280), read from their
source once, a chunk at a time (each chunk assigned to its cells and compared with the recall sample on the way),
and multiplied in bfloat16 a block at a time (2.3x faster than float32 on CPUs with AVX-512 BF16), blocks padded to
a few shapes (torch keeps a compiled kernel for every shape), cells side by side on the cores. Rounding moves a
squared distance of unit vectors by less than `ROUNDING_MARGIN`, so candidates are taken within the threshold plus
that margin and every pair returned is decided on its float32 vectors, read again from the source. Nothing holds
N x N or every candidate pair at once; the memory is estimated first and more than the limit is refused.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import faiss
import numpy as np
import torch

from retrieval.calibration import decide
from retrieval.errors import InvalidArgumentError
from retrieval.sources.read_ahead import ReadAhead
from retrieval.unit_distance import paired_distances, pairwise_distances, scores_from_squared_l2

PROBES = 6
"""Cells each vector visits beside its own (see `docs/decisions.md` for the recall this gives)."""
PCA_DIMENSIONS = 128
"""Where the cells are trained and assigned: 10x less work than 1,280 dimensions, and a partition needs no more."""
TRAINING_PER_CELL = 40
"""K-means sample per cell (FAISS warns below 39)."""
PCA_ROWS = 16_384
"""Of those, the rows the projection is fitted on (80 MiB at 1,280 dimensions)."""
CHUNK_ROWS = 8_192
"""Vectors read from the source, or re-checked, at a time."""
READ_AHEAD = 2
"""Chunks read from the source ahead of the one being compared with the recall sample."""
ASSIGN_ROWS = 2_048
"""Vectors assigned to their cells at a time by each worker: small blocks, so that what the allocator keeps of a
thread's freed blocks stays small too."""
QUERY_BLOCK, COLUMN_BLOCK = 1_024, 2_048
"""A cell's product is computed this many queries by this many residents at a time."""
QUERY_PADDING, TARGET_PADDING = 256, 64
"""A product's operands are padded with zero rows to a multiple of these: torch keeps a compiled bfloat16 kernel
(about 0.8 MB) for every shape it multiplies, and unpadded cells would each bring new shapes (4 GB at 1M
vectors); padded, there are at most 4 x 32."""
KERNEL_ROOM = 4 * 32 * 800_000
"""Bytes those kernels can take, at most."""
WORKERS = max(1, len(os.sched_getaffinity(0)))
"""Cells searched at once, one thread each (each product on its thread: see `one_torch_thread`)."""
ROUNDING_MARGIN = 2.0 ** -6
"""bfloat16 keeps 8 significant bits: each vector moves by at most 2^-9 of its norm and an inner product of two
by about 2^-8, which the product's bfloat16 result rounds by 2^-9 more; a squared distance (2 - 2 a.b) moves by
at most 3 x 2^-8, under this."""
MEMORY_LIMIT = 3 * 2 ** 30
"""The search's own arrays at most (the vectors in bfloat16, their cells, a cell's product), in bytes: with the
process itself (Python, torch, FAISS: about 0.5 GB), under 4 GB resident."""
RECALL_SAMPLE = 256
"""Vectors whose pairs are searched exactly for the recall check: each is compared in float32 with every vector
as the vectors are read."""


class VectorSource(Protocol):
    """Rows of L2-normalised vectors, read a chunk at a time and again by row number (sorted)."""

    @property
    def count(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def chunks(self) -> Iterator[np.ndarray]:
        """Every row in order, as float32 blocks."""
        ...

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """The float32 rows `rows` (sorted, unique)."""
        ...


@dataclass(frozen=True)
class ArrayVectors:
    """A source over an array already in memory (or memory-mapped)."""

    vectors: np.ndarray

    @property
    def count(self) -> int:
        return len(self.vectors)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def chunks(self) -> Iterator[np.ndarray]:
        for start in range(0, self.count, CHUNK_ROWS):
            yield np.asarray(self.vectors[start:start + CHUNK_ROWS], dtype=np.float32)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.vectors[rows], dtype=np.float32)


@dataclass(frozen=True)
class Cells:
    """Where each vector lives (`home`) and which cells it visits (`visits`, vectors x probes), of `count`."""

    home: np.ndarray
    visits: np.ndarray
    count: int


@dataclass(frozen=True)
class PartitionedPairs:
    """Pairs (first < second, rows) within the threshold and their float32 distances, and how they were found."""

    first: np.ndarray
    second: np.ndarray
    distance: np.ndarray
    cells: int
    probes: int
    recall: float | None
    sampled: int


def memory_needed(count: int, dim: int, probes: int = PROBES) -> int:
    """Bytes the search holds at its peak (an estimate): bfloat16 vectors, cells, the chunks read ahead or being
    assigned, each worker's product (bfloat16 scores, in float32, two masks, the indices of a mask all true) and
    blocks, and the compiled kernels."""
    product = (2 + 4 + 1 + 1 + 16) * QUERY_BLOCK * COLUMN_BLOCK + 2 * (QUERY_BLOCK + COLUMN_BLOCK) * dim
    chunks = 4 * CHUNK_ROWS * dim * (READ_AHEAD + 1) + 2 * 4 * ASSIGN_ROWS * dim * WORKERS
    return 2 * count * dim + 8 * count * (probes + 1) * 2 + chunks + WORKERS * product + KERNEL_ROOM


def check_memory(count: int, dim: int, probes: int, memory_limit: int) -> None:
    """`InvalidArgumentError` when the search would need more than `memory_limit` bytes."""
    needed = memory_needed(count, dim, probes)
    if needed > memory_limit:
        raise InvalidArgumentError(f"searching the pairs of {count:,} vectors of {dim} dimensions needs about "
                                   f"{needed / 2 ** 30:.1f} GiB, more than the {memory_limit / 2 ** 30:.1f} GiB "
                                   "allowed")


def cell_count(count: int) -> int:
    """Cells for `count` vectors: about 2 sqrt(N) as a power of two, so cells hold about sqrt(N) / 2 each."""
    return int(max(1, min(count // TRAINING_PER_CELL, 2 ** round(np.log2(max(1.0, 2 * np.sqrt(count)))))))


def partitioned_pairs(source: VectorSource, threshold: float, max_pairs: int | None = None,
                      probes: int = PROBES, memory_limit: int = MEMORY_LIMIT, recall_sample: int = RECALL_SAMPLE,
                      seed: int = 0) -> PartitionedPairs:
    """Pairs within `threshold` among the rows of `source`, cell by cell, with their pair recall measured against
    exact search for `recall_sample` random rows. `InvalidArgumentError` before any work when the memory needed
    exceeds `memory_limit`, and as soon as more than `max_pairs` pairs are certain."""
    check_memory(source.count, source.dim, probes, memory_limit)
    with single_threaded_libraries():
        return _searched(source, threshold, max_pairs, probes, recall_sample, seed)


def _searched(source: VectorSource, threshold: float, max_pairs: int | None, probes: int, recall_sample: int,
              seed: int) -> PartitionedPairs:
    from retrieval.dedup import check_pair_count

    rng = np.random.default_rng(seed)
    count = cell_count(source.count)
    training = np.sort(rng.permutation(source.count)[:count * TRAINING_PER_CELL])
    sample = np.sort(rng.permutation(source.count)[:recall_sample])
    stored, exact = _read(source, sample, threshold)
    partition = Partition.trained(lambda rows: stored[torch.from_numpy(rows)].float().numpy(), training, count, seed)
    cells = _cells(stored, partition, probes)
    first, second = _candidates(stored, cells, threshold, max_pairs)
    del stored
    first, second, distance = _decided(source, first, second, threshold)
    check_pair_count(len(first), threshold, max_pairs)
    recall = sampled_recall(sample, exact, first, second)
    return PartitionedPairs(first, second, distance, cells.count, probes, recall, len(sample))


@dataclass(frozen=True)
class Partition:
    """K-means centroids (none: one cell), in the PCA projection `mean`, `components` where the vectors have more
    than `PCA_DIMENSIONS` dimensions."""

    mean: np.ndarray | None
    components: np.ndarray | None
    centroids: faiss.Index | None
    count: int

    @classmethod
    def trained(cls, rows: Callable[[np.ndarray], np.ndarray], training: np.ndarray, cells: int, seed: int
                ) -> Partition:
        """`cells` cells trained on the rows `training` of a collection (`TRAINING_PER_CELL` random rows a cell),
        whose float32 vectors `rows` gives: the projection on `PCA_ROWS` of them, the k-means on all, projected
        `CHUNK_ROWS` at a time."""
        if cells == 1:
            return cls(None, None, None, 1)
        fitted = rows(training[::max(1, len(training) // PCA_ROWS)])
        mean = components = None
        if fitted.shape[1] > PCA_DIMENSIONS:
            mean = fitted.mean(axis=0)
            fitted -= mean
            _, vectors = np.linalg.eigh(fitted.T @ fitted)  # ascending eigenvalues: the last are the widest
            components = np.ascontiguousarray(vectors[:, -PCA_DIMENSIONS:], dtype=np.float32)
        del fitted
        partition = cls(mean, components, None, cells)
        sample = np.concatenate([partition.projected(rows(training[start:start + CHUNK_ROWS]))
                                 for start in range(0, len(training), CHUNK_ROWS)])
        kmeans = faiss.Kmeans(sample.shape[1], cells, niter=10, seed=seed)
        kmeans.train(sample)
        return cls(mean, components, kmeans.index, cells)

    def projected(self, vectors: np.ndarray) -> np.ndarray:
        """`vectors` in the space the cells are in (float32, contiguous)."""
        if self.components is None:
            return np.ascontiguousarray(vectors, dtype=np.float32)
        return np.ascontiguousarray(vectors @ self.components - self.mean @ self.components, dtype=np.float32)

    def nearest(self, vectors: np.ndarray, cells: int) -> np.ndarray:
        """The `cells` nearest centroids of each vector (at most `count`), nearest first."""
        if self.centroids is None:
            return np.zeros((len(vectors), 1), np.int64)
        return self.centroids.search(self.projected(vectors), min(cells, self.count))[1]


@contextmanager
def single_threaded_libraries() -> Iterator[None]:
    """torch and FAISS on one thread for each call while the search runs (restored after): their calls are many
    and small, and on a busy machine two threads that wait for each other cost a time slice each (25x slower
    measured at load 10 on 2 cores); the cores are used by running calls side by side instead (`WORKERS`)."""
    threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(faiss_threads)


def _read(source: VectorSource, sample: np.ndarray, threshold: float) -> tuple[torch.Tensor, set[tuple[int, int]]]:
    """The vectors of `source` in bfloat16, and, found on the way by comparing the float32 rows `sample` with every
    row, the pairs within `threshold` that involve them (exact search, for the recall check)."""
    stored = torch.empty((source.count, source.dim), dtype=torch.bfloat16)
    queries = source.rows(sample) if len(sample) else np.empty((0, source.dim), np.float32)
    exact: set[tuple[int, int]] = set()
    start = 0
    with ReadAhead(source.chunks(), depth=READ_AHEAD) as chunks:
        for chunk in chunks:
            stored[start:start + len(chunk)] = torch.from_numpy(chunk)
            mine, theirs = np.nonzero(decide(pairwise_distances(queries, chunk), threshold))
            a, b = sample[mine], theirs + start
            exact |= set(zip(np.minimum(a, b)[a != b].tolist(), np.maximum(a, b)[a != b].tolist()))
            start += len(chunk)
    return stored, exact


def _cells(stored: torch.Tensor, partition: Partition, probes: int) -> Cells:
    """Each stored vector's cell and the `probes` next nearest, assigned `ASSIGN_ROWS` at a time, `WORKERS` blocks
    side by side."""
    nearest = np.empty((len(stored), min(1 + probes, partition.count)), np.int64)

    def assign(start: int) -> None:
        chunk = stored[start:start + ASSIGN_ROWS].float().numpy()
        nearest[start:start + len(chunk)] = partition.nearest(chunk, nearest.shape[1])

    with ThreadPoolExecutor(WORKERS) as workers:
        list(workers.map(assign, range(0, len(stored), ASSIGN_ROWS)))
    return Cells(nearest[:, 0].copy(), nearest[:, 1:].copy(), partition.count)


def _members(labels: np.ndarray, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, starts): `order[starts[c]:starts[c + 1]]` are the positions labelled c, ascending."""
    order = np.argsort(labels, kind="stable")
    return order, np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=cells))])


def _candidates(stored: torch.Tensor, cells: Cells, threshold: float, max_pairs: int | None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs (first < second) whose bfloat16 distance is within `threshold` plus the rounding margin: within
    each cell, and between a cell's residents and its visitors; `WORKERS` cells at a time."""
    from retrieval.dedup import check_pair_count

    residents, resident_starts = _members(cells.home, cells.count)
    visits, visit_starts = _members(cells.visits.ravel(), cells.count)
    visitors_of = visits // max(1, cells.visits.shape[1])
    least_score = float(scores_from_squared_l2(threshold + ROUNDING_MARGIN))

    def cell_pairs(cell: int) -> tuple[np.ndarray, np.ndarray]:
        home = residents[resident_starts[cell]:resident_starts[cell + 1]]
        guests = np.sort(visitors_of[visit_starts[cell]:visit_starts[cell + 1]])
        return _cell_candidates(stored, home, guests, least_score)

    firsts: list[np.ndarray] = []
    seconds: list[np.ndarray] = []
    found = 0
    with ThreadPoolExecutor(WORKERS) as workers:
        for first, second in workers.map(cell_pairs, range(cells.count)):
            firsts.append(first)
            seconds.append(second)
            found += len(first)
            if max_pairs is not None and found > 2 * max_pairs:  # a pair is found at most twice
                first, second = _unique(firsts, seconds)
                firsts, seconds, found = [first], [second], len(first)
                check_pair_count(found, threshold, max_pairs)
    return _unique(firsts, seconds)


def _cell_candidates(stored: torch.Tensor, home: np.ndarray, guests: np.ndarray, least_score: float
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of one cell: its residents `home` among themselves (each pair once: the earlier one asks) and
    with its visitors `guests`, whose bfloat16 inner product is at least `least_score`."""
    firsts: list[np.ndarray] = []
    seconds: list[np.ndarray] = []
    for column in range(0, len(home), COLUMN_BLOCK):
        targets = home[column:column + COLUMN_BLOCK]
        target_vectors = _gathered(stored, targets, TARGET_PADDING)
        for rows, own in ((home[:column + len(targets)], True), (guests, False)):
            for start in range(0, len(rows), QUERY_BLOCK):
                block = rows[start:start + QUERY_BLOCK]
                scores = (_gathered(stored, block, QUERY_PADDING) @ target_vectors.T)[:len(block), :len(targets)]
                near = scores.float() >= least_score  # the bound in float32: in bfloat16 it would round
                if own:
                    near &= (torch.arange(start, start + len(block))[:, None]
                             < torch.arange(column, column + len(targets))[None, :])
                mine, theirs = (index.numpy() for index in torch.nonzero(near, as_tuple=True))
                firsts.append(np.minimum(block[mine], targets[theirs]))
                seconds.append(np.maximum(block[mine], targets[theirs]))
    return (np.concatenate(firsts), np.concatenate(seconds)) if firsts else (np.empty(0, np.int64),) * 2


def _gathered(stored: torch.Tensor, rows: np.ndarray, padding: int) -> torch.Tensor:
    """The bfloat16 vectors `rows`, then zero rows up to a multiple of `padding` (see `TARGET_PADDING`)."""
    padded = torch.zeros((-(-len(rows) // padding) * padding, stored.shape[1]), dtype=stored.dtype)
    torch.index_select(stored, 0, torch.from_numpy(rows), out=padded[:len(rows)])
    return padded


def _unique(firsts: list[np.ndarray], seconds: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if not firsts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    keys = np.unique(np.concatenate(firsts).astype(np.int64) << 32 | np.concatenate(seconds).astype(np.int64))
    return keys >> 32, keys & 0xFFFFFFFF


def _decided(source: VectorSource, first: np.ndarray, second: np.ndarray, threshold: float
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidates that are pairs by their float32 vectors, with those distances; `CHUNK_ROWS` pairs at a time."""
    keep, distances = np.zeros(len(first), bool), np.zeros(len(first), np.float32)
    for start in range(0, len(first), CHUNK_ROWS):
        a, b = first[start:start + CHUNK_ROWS], second[start:start + CHUNK_ROWS]
        rows = np.union1d(a, b)
        vectors = source.rows(rows)
        distance = paired_distances(vectors[np.searchsorted(rows, a)], vectors[np.searchsorted(rows, b)])
        distances[start:start + len(a)] = distance
        keep[start:start + len(a)] = decide(distance, threshold)
    return first[keep], second[keep], distances[keep]


def sampled_recall(sample: np.ndarray, exact: set[tuple[int, int]], first: np.ndarray, second: np.ndarray
                   ) -> float | None:
    """Of the `exact` pairs (those within the threshold that involve the rows `sample`), the fraction among
    (first, second); None when there is none."""
    if not exact:
        return None
    sampled = set(sample.tolist())
    found = {(a, b) for a, b in zip(first.tolist(), second.tolist()) if a in sampled or b in sampled}
    return len(exact & found) / len(exact)
