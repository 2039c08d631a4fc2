"""Close pairs at scale: a k-nearest-neighbour graph through the index's own approximate vector index, instead of
an exact all-pairs range search (35 minutes at a million vectors), with its pair recall measured against exact
search on a sample.

Every vector asks the index for its `GRAPH_NEIGHBOURS` nearest; a neighbour within the threshold (by the exact
distance of the two stored vectors, whatever the index's codes say) makes a pair. A vector with more near
duplicates than that keeps only the nearest as direct pairs, but connected components still join the rest
through them; the recall reported is of pairs, the stricter measure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from retrieval.decisions.calibration import decide
from retrieval.store.vector_index import VectorIndex
from retrieval.vectors.faiss_factory import EXACT, new_faiss_index
from retrieval.vectors.unit_distance import radius_for_threshold, squared_l2_from_scores

GRAPH_NEIGHBOURS = 16
RECALL_SAMPLE = 1000
QUERY_BLOCK = 4096


@dataclass(frozen=True)
class PairSearch:
    """How the close pairs were found: "exact" (range search over every pair), "knn-graph" (with `neighbours`
    each) or "partitioned" (in `cells` cells, each vector also compared in those of its `neighbours` next nearest
    whose border lies near it: `retrieval.vectors.partitioned_pairs`); beyond exact, its pair `recall` against exact
    search measured on `sampled` vectors (None where the sample held no pair)."""

    method: str
    neighbours: int | None = None
    recall: float | None = None
    sampled: int = 0
    cells: int | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def graph_pairs(searcher: VectorIndex, ids: np.ndarray, vectors: np.ndarray, threshold: float,
                neighbours: int = GRAPH_NEIGHBOURS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (rows i < j of `vectors`, whose database ids are `ids`) within `threshold` among each vector's
    `neighbours` nearest in `searcher`; neighbours outside `ids` are ignored. Returns (first, second, distance)."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    firsts, seconds = [], []
    for start in range(0, len(data), QUERY_BLOCK):
        block = data[start:start + QUERY_BLOCK]
        _, found = searcher.search(block, neighbours + 1)
        places = np.clip(np.searchsorted(sorted_ids, found), 0, max(0, len(sorted_ids) - 1))
        known = (found >= 0) & (sorted_ids[places] == found) if len(sorted_ids) else np.zeros_like(found, bool)
        rows = np.where(known, order[places], -1)
        own = np.arange(start, start + len(block))[:, None]
        partners = np.where(known, rows, 0)
        distance = squared_l2_from_scores(np.einsum("ij,ikj->ik", block, data[partners]))
        keep = known & (rows != own) & decide(distance, threshold)
        mine = np.broadcast_to(own, rows.shape)[keep]
        theirs = rows[keep]
        firsts.append(np.minimum(mine, theirs))
        seconds.append(np.maximum(mine, theirs))
    if not firsts:
        empty = np.empty(0, np.int64)
        return empty, empty, np.empty(0, np.float32)
    pairs = np.unique(np.stack([np.concatenate(firsts), np.concatenate(seconds)], axis=1), axis=0)
    first, second = pairs[:, 0], pairs[:, 1]
    distance = squared_l2_from_scores(np.einsum("ij,ij->i", data[first], data[second]))
    return first, second, distance


def pair_recall(vectors: np.ndarray, first: np.ndarray, second: np.ndarray, threshold: float,
                sample: int = RECALL_SAMPLE, seed: int = 0) -> tuple[float | None, int]:
    """(recall, sampled): of the pairs within `threshold` that exact range search finds for a random sample of
    rows, the fraction among (first, second); None when the sample has no such pair."""
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).permutation(len(data))[:sample])
    exact_index = new_faiss_index(data.shape[1], EXACT)
    exact_index.add(data)
    limits, _, found = exact_index.range_search(data[rows], radius_for_threshold(threshold))
    owners = np.repeat(rows, np.diff(limits.astype(np.int64)))
    others = found.astype(np.int64)
    keep = owners != others
    exact = set(zip(np.minimum(owners, others)[keep].tolist(), np.maximum(owners, others)[keep].tolist()))
    if not exact:
        return None, len(rows)
    sampled = set(rows.tolist())
    graph = {(a, b) for a, b in zip(first.tolist(), second.tolist()) if a in sampled or b in sampled}
    return len(exact & graph) / len(exact), len(rows)
