"""Near-duplicate groups: every pair within a distance (FAISS range search while the index is exact, a kNN graph
through its approximate index beyond: `retrieval.neighbour_graph`), then connected components.

Distances are squared L2 between L2-normalised vectors (``retrieval.unit_distance``), a function of their inner
product, so ``d <= t`` is an inner-product range search (radius ``1 - t / 2``); the all-pairs work is FAISS's
(blocked BLAS), never a Python loop.

What a group proposes must be safe to delete: each member is looked at on disk when the group is made, a path
that no longer holds the file indexed there (deleted, replaced or rewritten since) is left out, and of several
paths to one file (links) only one is a member, the one without a symbolic link where there is one. So no proposed path is the keeper's file or another kept
path's, and a symbolic link is never the keeper of a group that holds its target.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from retrieval.faiss_factory import EXACT, new_faiss_index
from retrieval.file_identity import FileIdentity, identify_file
from retrieval.index import SimilarityIndex
from retrieval.neighbour_graph import GRAPH_NEIGHBOURS, PairSearch, graph_pairs, pair_recall
from retrieval.unit_distance import DISTANCE_DIGITS, distance_between, radius_for_threshold, squared_l2_from_scores

QUERY_BLOCK = 4096
"""Queries per range search call, which bounds the memory of the result lists."""


@dataclass(frozen=True)
class Candidate:
    """What choosing the keeper of a group looks at."""

    path: str
    width: int | None
    height: int | None
    mtime_ns: int | None
    image_id: int | None = None
    """The indexed image (None for one that is not in an index)."""
    file_id: str | None = None
    size: int | None = None
    """With `mtime_ns`: the file as it was indexed, to tell whether its path still holds it."""

    @property
    def pixels(self) -> int:
        return (self.width or 0) * (self.height or 0)

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "width": self.width, "height": self.height, "image_id": self.image_id}


@dataclass(frozen=True)
class DuplicateGroup:
    """A keeper and the others; `distances[i]` is the distance of `others[i]` to the keeper."""

    keeper: Candidate
    others: list[Candidate]
    distances: list[float]

    def to_dict(self) -> dict[str, object]:
        return {"keeper": self.keeper.to_dict(),
                "duplicates": [{**other.to_dict(), "distance": round(distance, DISTANCE_DIGITS)}
                               for other, distance in zip(self.others, self.distances)]}


CSV_HEADER = ["group", "role", "path", "distance", "width", "height", "image_id"]


def csv_rows(groups: Sequence[DuplicateGroup]) -> Iterator[list[object]]:
    """`CSV_HEADER`, then one row per image of each group: its keeper, then its duplicates."""
    yield CSV_HEADER
    for number, group in enumerate(groups, 1):
        keeper = group.keeper
        yield [number, "keeper", keeper.path, 0.0, keeper.width, keeper.height, keeper.image_id]
        for other, distance in zip(group.others, group.distances):
            yield [number, "duplicate", other.path, round(distance, DISTANCE_DIGITS), other.width, other.height,
                   other.image_id]


def keeper_order(candidate: Candidate) -> tuple[int, int, int, str]:
    """Sort key: most pixels first, then oldest, then shortest path (then the path, for a stable answer)."""
    mtime = candidate.mtime_ns if candidate.mtime_ns is not None else np.iinfo(np.int64).max
    return (-candidate.pixels, mtime, len(candidate.path), candidate.path)


def pairs_within(vectors: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` of rows of `vectors` (L2-normalised) with squared L2 distance <= `threshold`.

    Returns (first, second, distance) arrays.
    """
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    index = new_faiss_index(data.shape[1], EXACT)
    index.add(data)
    radius = radius_for_threshold(threshold)
    firsts, seconds, distances = [], [], []
    for start in range(0, len(data), QUERY_BLOCK):
        limits, scores, found = index.range_search(data[start:start + QUERY_BLOCK], radius)
        rows = np.repeat(np.arange(start, start + len(limits) - 1), np.diff(limits.astype(np.int64)))
        keep = found > rows
        firsts.append(rows[keep])
        seconds.append(found[keep])
        distances.append(squared_l2_from_scores(scores[keep]))
    return np.concatenate(firsts), np.concatenate(seconds), np.concatenate(distances)


def connected_groups(count: int, first: np.ndarray, second: np.ndarray) -> list[np.ndarray]:
    """Members (row numbers) of each connected component with at least two members."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(first), dtype=np.int8), (first, second)), shape=(count, count))
    _, component = connected_components(graph, directed=False)
    order = np.argsort(component, kind="stable")
    starts = np.flatnonzero(np.diff(component[order], prepend=-1))
    return [members for members in np.split(order, starts[1:]) if len(members) > 1]


def duplicate_groups(vectors: np.ndarray, owners: Sequence[Sequence[Candidate]], threshold: float,
                     identify: Callable[[str], FileIdentity | None] = identify_file,
                     pairs: tuple[np.ndarray, np.ndarray] | None = None) -> list[DuplicateGroup]:
    """Groups of near-duplicate images; `owners[i]` are the images whose vector is `vectors[i]` (copies of one
    file share a vector, and are duplicates of each other at distance 0). Largest groups first.

    `identify` tells what each member's path reaches now (one path per file is kept; see the module's doc).
    `pairs` (rows i, j within the threshold) found otherwise (`retrieval.neighbour_graph`); else every pair is
    searched exactly.
    """
    first, second = pairs if pairs is not None else pairs_within(vectors, threshold)[:2]
    linked = set(np.concatenate([first, second]).tolist())
    components = connected_groups(len(vectors), first, second)
    components += [np.array([i]) for i, images in enumerate(owners) if len(images) > 1 and i not in linked]
    groups = []
    for members in components:
        images = _one_path_per_file([(image, int(row)) for row in members for image in owners[int(row)]], identify)
        if len(images) < 2:
            continue
        images.sort(key=lambda pair: keeper_order(pair[0]))
        (keeper, keeper_row), rest = images[0], images[1:]
        anchor = vectors[keeper_row]
        distances = [0.0 if row == keeper_row else distance_between(vectors[row], anchor) for _, row in rest]
        groups.append(DuplicateGroup(keeper, [image for image, _ in rest], distances))
    groups.sort(key=lambda group: (-len(group.others), group.keeper.path))
    return groups


def _one_path_per_file(images: list[tuple[Candidate, int]], identify: Callable[[str], FileIdentity | None]
                       ) -> list[tuple[Candidate, int]]:
    """The members whose path still holds the file indexed there (not deleted, replaced or rewritten since), one
    path per file: the one without a symbolic link, then the one the keeper rule prefers."""
    present = [(image, row, identity) for image, row in images if (identity := identify(image.path)) is not None
               and identity.is_as_indexed(image.file_id, image.size, image.mtime_ns)]
    present.sort(key=lambda member: (member[2].via_link, keeper_order(member[0])))
    files: dict[str, tuple[Candidate, int]] = {}
    for image, row, identity in present:
        files.setdefault(identity.file_id, (image, row))
    return list(files.values())


@dataclass(frozen=True)
class DuplicateSearch:
    """Duplicate groups, and how their pairs were found (exact, or a kNN graph with its measured recall)."""

    groups: list[DuplicateGroup]
    pairs: PairSearch

    def to_dict(self) -> dict[str, object]:
        return {"groups": [group.to_dict() for group in self.groups], "pairs": self.pairs.to_dict()}


def index_duplicates(index: SimilarityIndex, threshold: float, roots: Sequence[str] | None = None
                     ) -> DuplicateSearch:
    """Near-duplicate groups among the indexed images (only those under `roots`, absolute paths, when given).
    While the index's vector index is exact, every pair is searched; once it is approximate, through it as a kNN
    graph, whose pair recall is measured on a sample and reported."""
    ids, vectors = index.served_vectors()
    row_of = {int(vector_id): row for row, vector_id in enumerate(ids)}
    owners: list[list[Candidate]] = [[] for _ in range(len(ids))]
    for path, width, height, mtime_ns, vector_id, image_id, file_id, size in index.store.indexed_images(roots):
        row = row_of.get(int(vector_id))
        if row is not None:
            owners[row].append(Candidate(path, width, height, mtime_ns, image_id, file_id, size))
    used = np.array([row for row, images in enumerate(owners) if images], dtype=np.int64)
    if len(used) == 0:
        return DuplicateSearch([], PairSearch("exact"))
    info = index.vector_info()
    if info is None or info.description == EXACT:
        return DuplicateSearch(duplicate_groups(vectors[used], [owners[row] for row in used], threshold),
                               PairSearch("exact"))
    first, second, _ = graph_pairs(index.vector_index(), ids[used], vectors[used], threshold)
    recall, sampled = pair_recall(vectors[used], first, second, threshold, seed=len(used))
    groups = duplicate_groups(vectors[used], [owners[row] for row in used], threshold, pairs=(first, second))
    return DuplicateSearch(groups, PairSearch("knn-graph", GRAPH_NEIGHBOURS, recall, sampled))
