"""Every pair within a threshold over a collection too large to compare whole: cell by cell, in bounded memory.

SemDeDup's way (Abbas et al. 2023), with the cells' borders searched too: k-means on a random sample splits the
collection into cells; each vector lives in the cell of its nearest centroid and also visits the neighbouring
cells whose border lies near it, where it is compared with every vector that lives there. A pair is found when
both lie in one cell, or one lies in a cell the other visits. Cells are assigned in a PCA projection of the
vectors (`PCA_DIMENSIONS`), which is where the k-means also runs; every distance that decides a pair is the full
one.

Which borders: a vector x of cell h has a neighbour y within L2 distance s (s^2 the threshold) in cell c only if
x lies within s of the border between h and c, the hyperplane halfway between their centroids: y lies on c's
side of it, and the projection only shortens distances. Visiting every cell whose border lies within s would be
exact, and at a threshold of 0.667 (s = 0.82) on 1,280-d embeddings it would take in nearly every cell: all-pairs
again. What matters is the pair's difference along one direction, the one across the border, and how long that is
depends on the collection: near copies whose differences spread over many dimensions lie close to the border
when split by it, while look-alikes that differ in the directions the cells are drawn along lie far from it. So
the width is measured: a random sample of vectors (`TUNING_SAMPLE`) is compared with every vector, and for each
of its pairs split by a border, how near the border one of the two lies; the width is the largest of these times
`BORDER_MARGIN` (never less than `BORDER_SPREADS` times s / sqrt(d), never more than s; s where the sample holds
no pair). Each vector visits the cells among its `MOST_VISITS` next nearest whose border lies within that width:
on near copies most vectors, deep in their cell, visit none or one; on look-alikes, all of them. What this
misses is measured: `sampled_recall` compares the pairs with exact search for a random sample of vectors, and
`docs/decisions.md` says what that figure means.

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

from retrieval.decisions.calibration import decide
from retrieval.errors import InvalidArgumentError
from retrieval.sources.read_ahead import ReadAhead
from retrieval.vectors.unit_distance import paired_distances, scores_from_squared_l2

MOST_VISITS = 12
"""Cells a vector may visit beside its own: those of its nearest whose border is near (`BORDER_SHARE`)."""
BORDER_MARGIN = 1.5
"""The border's width is the farthest that a sampled pair needed, times this (see `docs/decisions.md` for the
recall and the work this gives)."""
BORDER_SPREADS = 3.0
"""The least width: this many times s / sqrt(d), a difference of the threshold's length s spread over all d
dimensions, along one of them."""
TUNING_SAMPLE = 256
"""Vectors whose pairs (found by comparing them with every vector as the vectors are read) set the width."""
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
    """Where each vector lives (`home`), and the vectors visiting each of the `count` cells: those of cell c are
    `visitors[starts[c]:starts[c + 1]]` (ascending)."""

    home: np.ndarray
    visitors: np.ndarray
    starts: np.ndarray
    count: int


@dataclass(frozen=True)
class PartitionedPairs:
    """Pairs (first < second, rows) within the threshold and their float32 distances, and how they were found."""

    first: np.ndarray
    second: np.ndarray
    distance: np.ndarray
    cells: int
    most_visits: int
    border: float
    mean_visits: float
    recall: float | None
    sampled: int


def memory_needed(count: int, dim: int) -> int:
    """Bytes the search holds at its peak (an estimate): the bfloat16 vectors, and the most of what each step
    holds beside them: reading (the chunks read ahead), assigning (each worker's blocks, and every vector's visits
    as (vector, cell) int32 pairs while they are sorted: at most `MOST_VISITS` a vector; the centroids' inner
    products, kept throughout) and searching (the cells,
    each worker's product: bfloat16 scores, in float32, two masks, the indices of a mask all true; its blocks;
    the compiled kernels)."""
    asked = RECALL_SAMPLE + TUNING_SAMPLE
    reading = 4 * CHUNK_ROWS * dim * (READ_AHEAD + 1) + (4 + 2) * asked * dim + (2 + 4 + 1) * asked * CHUNK_ROWS
    cells = cell_count(count)
    assigning = 2 * 4 * ASSIGN_ROWS * (dim + cells) * WORKERS + (4 + 4 + 8 + 4) * count * MOST_VISITS
    product = (2 + 4 + 1 + 1 + 16) * QUERY_BLOCK * COLUMN_BLOCK + 2 * (QUERY_BLOCK + COLUMN_BLOCK) * dim
    searching = (8 + 8) * count + 4 * count * MOST_VISITS + WORKERS * product + KERNEL_ROOM
    return 2 * count * dim + 4 * cells * cells + max(reading, assigning, searching)


def check_memory(count: int, dim: int, memory_limit: int) -> None:
    """`InvalidArgumentError` when the search would need more than `memory_limit` bytes."""
    needed = memory_needed(count, dim)
    if needed > memory_limit:
        raise InvalidArgumentError(f"searching the pairs of {count:,} vectors of {dim} dimensions needs about "
                                   f"{needed / 2 ** 30:.1f} GiB, more than the {memory_limit / 2 ** 30:.1f} GiB "
                                   "allowed")


def border_width(needed: np.ndarray, threshold: float, dim: int) -> float:
    """How near its border a vector visits a neighbouring cell, from how near the sampled pairs split by a border
    needed it (`needed`: 0 for a pair in one cell, infinite for one beyond `MOST_VISITS`): see the module's
    docstring."""
    reach = float(np.sqrt(max(threshold, 0.0)))
    if len(needed) == 0:
        return reach
    reachable = needed[np.isfinite(needed)]
    farthest = float(reachable.max()) if len(reachable) else reach
    return min(reach, max(BORDER_SPREADS * reach / np.sqrt(dim), BORDER_MARGIN * farthest))


def cell_count(count: int) -> int:
    """Cells for `count` vectors: about 2 sqrt(N) as a power of two, so cells hold about sqrt(N) / 2 each."""
    return int(max(1, min(count // TRAINING_PER_CELL, 2 ** round(np.log2(max(1.0, 2 * np.sqrt(count)))))))


def partitioned_pairs(source: VectorSource, threshold: float, max_pairs: int | None = None,
                      memory_limit: int = MEMORY_LIMIT, recall_sample: int = RECALL_SAMPLE,
                      seed: int = 0) -> PartitionedPairs:
    """Pairs within `threshold` among the rows of `source`, cell by cell, with their pair recall measured against
    exact search for `recall_sample` random rows. `InvalidArgumentError` before any work when the memory needed
    exceeds `memory_limit`, and as soon as more than `max_pairs` pairs are certain."""
    check_memory(source.count, source.dim, memory_limit)
    with single_threaded_libraries():
        return _searched(source, threshold, max_pairs, recall_sample, seed)


def _searched(source: VectorSource, threshold: float, max_pairs: int | None, recall_sample: int,
              seed: int) -> PartitionedPairs:
    from retrieval.decisions.dedup import check_pair_count

    rng = np.random.default_rng(seed)
    count = cell_count(source.count)
    training = np.sort(rng.permutation(source.count)[:count * TRAINING_PER_CELL])
    drawn = rng.permutation(source.count)
    sample, tuning = np.sort(drawn[:recall_sample]), np.sort(drawn[recall_sample:recall_sample + TUNING_SAMPLE])
    stored, exact = _read(source, np.union1d(sample, tuning), threshold)

    def rows_of(rows: np.ndarray) -> np.ndarray:
        return stored[torch.from_numpy(np.asarray(rows, np.int64))].float().numpy()

    partition = Partition.trained(rows_of, training, count, seed)
    tuned = _involving(exact, tuning)
    needed = partition.needed_border(rows_of(tuned[:, 0]), rows_of(tuned[:, 1]))
    border = border_width(needed, threshold, source.dim)
    cells = _cells(stored, partition, border)
    first, second = _candidates(stored, cells, threshold, max_pairs)
    del stored
    first, second, distance = _decided(source, first, second, threshold)
    check_pair_count(len(first), threshold, max_pairs)
    recall = sampled_recall(sample, exact, first, second)
    mean_visits = len(cells.visitors) / max(1, source.count)
    return PartitionedPairs(first, second, distance, cells.count, MOST_VISITS, border, mean_visits, recall,
                            len(sample))


def _involving(pairs: set[tuple[int, int]], rows: np.ndarray) -> np.ndarray:
    """Those of `pairs` (as an n x 2 array) that involve one of `rows`."""
    found = np.array(sorted(pairs), np.int64).reshape(-1, 2)
    return found[np.isin(found, rows).any(axis=1)]


@dataclass(frozen=True)
class Partition:
    """`count` k-means centroids (`centres`; none: one cell) and their inner products (`gram`), in the PCA
    projection `mean`, `components` where the vectors have more than `PCA_DIMENSIONS` dimensions."""

    mean: np.ndarray | None
    components: np.ndarray | None
    centres: torch.Tensor | None
    gram: torch.Tensor | None
    count: int

    @classmethod
    def trained(cls, rows: Callable[[np.ndarray], np.ndarray], training: np.ndarray, cells: int, seed: int
                ) -> Partition:
        """`cells` cells trained on the rows `training` of a collection (`TRAINING_PER_CELL` random rows a cell),
        whose float32 vectors `rows` gives: the projection on `PCA_ROWS` of them, the k-means on all, projected
        `CHUNK_ROWS` at a time."""
        if cells == 1:
            return cls(None, None, None, None, 1)
        fitted = rows(training[::max(1, len(training) // PCA_ROWS)])
        mean = components = None
        if fitted.shape[1] > PCA_DIMENSIONS:
            mean = fitted.mean(axis=0)
            fitted -= mean
            _, vectors = np.linalg.eigh(fitted.T @ fitted)  # ascending eigenvalues: the last are the widest
            components = np.ascontiguousarray(vectors[:, -PCA_DIMENSIONS:], dtype=np.float32)
        del fitted
        partition = cls(mean, components, None, None, cells)
        sample = np.concatenate([partition.projected(rows(training[start:start + CHUNK_ROWS]))
                                 for start in range(0, len(training), CHUNK_ROWS)])
        kmeans = faiss.Kmeans(sample.shape[1], cells, niter=10, seed=seed)
        kmeans.train(sample)
        centres = torch.from_numpy(kmeans.centroids)
        return cls(mean, components, centres, centres @ centres.T, cells)

    def projected(self, vectors: np.ndarray) -> np.ndarray:
        """`vectors` in the space the cells are in (float32, contiguous)."""
        if self.components is None:
            return np.ascontiguousarray(vectors, dtype=np.float32)
        return np.ascontiguousarray(vectors @ self.components - self.mean @ self.components, dtype=np.float32)

    def borders(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(nearest, distance): each vector's `MOST_VISITS` + 1 nearest cells (at most `count`), its own first,
        and how far it lies from the border between its own cell and each (0 for its own), in the projection."""
        if self.centres is None or self.gram is None:
            return np.zeros((len(vectors), 1), np.int64), np.zeros((len(vectors), 1), np.float32)
        lengths = torch.diagonal(self.gram)
        # |x - c|^2 less |x|^2, the same for every c: the order and the differences below need no more
        partial = torch.addmm(lengths[None, :], torch.from_numpy(self.projected(vectors)), self.centres.T, alpha=-2)
        partial, nearest = torch.topk(partial, min(1 + MOST_VISITS, self.count), dim=1, largest=False)
        home = nearest[:, :1]
        apart = (lengths[nearest] + lengths[home] - 2 * self.gram[home, nearest]).clamp_min(0).sqrt()
        # x's distance to the hyperplane halfway between centroids h and c: (|x - c|^2 - |x - h|^2) / (2 |c - h|)
        distance = (partial - partial[:, :1]) / (2 * apart).clamp_min(torch.finfo(torch.float32).tiny)
        return nearest.numpy(), distance.numpy()

    def cells_of(self, vectors: np.ndarray, border: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(home, rows, cells): each vector's cell, and the (vector row, cell) pairs of the other cells among its
        `MOST_VISITS` nearest whose border with its own lies within `border` of it."""
        nearest, distance = self.borders(vectors)
        rows, ranks = np.nonzero(distance[:, 1:] <= border)
        return nearest[:, 0], rows.astype(np.int32), nearest[:, 1:][rows, ranks].astype(np.int32)

    def needed_border(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """For each pair (first[i], second[i]) the width of border that finds it: 0 when both lie in one cell,
        infinite when neither lies among the other's `MOST_VISITS` next nearest cells."""
        first_cells, first_distance = self.borders(first)
        second_cells, second_distance = self.borders(second)
        needed = np.where(first_cells[:, 0] == second_cells[:, 0], 0.0, np.inf)
        for cells, distance, other in ((first_cells, first_distance, second_cells),
                                       (second_cells, second_distance, first_cells)):
            toward = np.where(cells[:, 1:] == other[:, :1], distance[:, 1:], np.inf)
            needed = np.minimum(needed, toward.min(axis=1, initial=np.inf))
        return needed


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
    """The vectors of `source` in bfloat16, and, found on the way by comparing the rows `sample` with every row,
    the pairs within `threshold` that involve them (exact search, for the recall check: candidates by their
    bfloat16 product within the rounding margin, each decided on its float32 vectors)."""
    stored = torch.empty((source.count, source.dim), dtype=torch.bfloat16)
    queries = source.rows(sample) if len(sample) else np.empty((0, source.dim), np.float32)
    asked = torch.from_numpy(queries).bfloat16()
    least_score = float(scores_from_squared_l2(threshold + ROUNDING_MARGIN))
    exact: set[tuple[int, int]] = set()
    start = 0
    with ReadAhead(source.chunks(), depth=READ_AHEAD) as chunks:
        for chunk in chunks:
            block = stored[start:start + len(chunk)]
            block.copy_(torch.from_numpy(chunk))
            mine, theirs = (index.numpy() for index in torch.nonzero((asked @ block.T).float() >= least_score,
                                                                        as_tuple=True))
            same = decide(paired_distances(queries[mine], chunk[theirs]), threshold)
            a, b = sample[mine[same]], theirs[same] + start
            exact |= set(zip(np.minimum(a, b)[a != b].tolist(), np.maximum(a, b)[a != b].tolist()))
            start += len(chunk)
    return stored, exact


def _cells(stored: torch.Tensor, partition: Partition, border: float) -> Cells:
    """Each stored vector's cell and the cells it visits (`Partition.cells_of`), assigned `ASSIGN_ROWS` at a
    time, `WORKERS` blocks side by side."""
    home = np.empty(len(stored), np.int64)

    def assign(start: int) -> tuple[np.ndarray, np.ndarray]:
        block = stored[start:start + ASSIGN_ROWS].float().numpy()
        home[start:start + len(block)], rows, cells = partition.cells_of(block, border)
        return rows + np.int32(start), cells

    with ThreadPoolExecutor(WORKERS) as workers:
        visits = list(workers.map(assign, range(0, len(stored), ASSIGN_ROWS)))
    rows = np.concatenate([rows for rows, _ in visits])
    cells = np.concatenate([cells for _, cells in visits])
    del visits
    order, starts = _members(cells, partition.count)
    return Cells(home, rows[order], starts, partition.count)


def _members(labels: np.ndarray, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, starts): `order[starts[c]:starts[c + 1]]` are the positions labelled c, ascending."""
    order = np.argsort(labels, kind="stable")
    return order, np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=cells))])


def _candidates(stored: torch.Tensor, cells: Cells, threshold: float, max_pairs: int | None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs (first < second) whose bfloat16 distance is within `threshold` plus the rounding margin: within
    each cell, and between a cell's residents and its visitors; `WORKERS` cells at a time."""
    from retrieval.decisions.dedup import check_pair_count

    residents, resident_starts = _members(cells.home, cells.count)
    least_score = float(scores_from_squared_l2(threshold + ROUNDING_MARGIN))

    def cell_pairs(cell: int) -> tuple[np.ndarray, np.ndarray]:
        home = residents[resident_starts[cell]:resident_starts[cell + 1]]
        guests = cells.visitors[cells.starts[cell]:cells.starts[cell + 1]]
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
    """Of the `exact` pairs (those within the threshold found by exact search) that involve the rows `sample`,
    the fraction among (first, second); None when there is none."""
    sampled = set(sample.tolist())
    asked = {(a, b) for a, b in exact if a in sampled or b in sampled}
    if not asked:
        return None
    found = {(a, b) for a, b in zip(first.tolist(), second.tolist()) if a in sampled or b in sampled}
    return len(asked & found) / len(asked)
