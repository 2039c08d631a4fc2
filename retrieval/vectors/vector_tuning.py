"""Measured, not hoped: the recall of an approximate index, and the narrowest search that reaches a target.

Queries are drawn at random from the collection itself (what users search with: images like those indexed);
each query's own vector is left out of both the exact and the approximate answers, so that finding itself does
not count. Recall@10 is the fraction of the exact 10 nearest that the approximate search returns.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import faiss
import numpy as np

from retrieval.store.vector_index import VectorIndex

DEFAULT_TARGET_RECALL = 0.95
QUERIES = 1000
K = 10
PLATEAU = 0.002
"""Doubling nprobe stops once it gains less recall@10 than this: the codes, not the lists searched, limit it."""


@dataclass(frozen=True)
class Tuning:
    """How an index searches and what that achieves: `nprobe` (None for an exact index), the recall@10 measured
    on `queries` held-out queries, and the batched search time a query."""

    nprobe: int | None
    recall_at_10: float
    queries: int
    ms_per_query: float
    target_recall: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _without_self(found: np.ndarray, own: np.ndarray) -> list[np.ndarray]:
    return [row[(row != self_id) & (row >= 0)][:K] for row, self_id in zip(found, own)]


def measure_recall(index: VectorIndex, queries: np.ndarray, own_ids: np.ndarray,
                   exact: list[np.ndarray]) -> tuple[float, float]:
    """(recall@10 against `exact`, ms a query) of `index` as it is set now."""
    started = time.perf_counter()
    _, found = index.search(queries, K + 1)
    seconds = time.perf_counter() - started
    approximate = _without_self(found, own_ids)
    hits = [len(np.intersect1d(a, e)) / max(1, len(e)) for a, e in zip(approximate, exact)]
    return float(np.mean(hits)) if hits else 1.0, 1000 * seconds / max(1, len(queries))


def tune(index: VectorIndex, ids: np.ndarray, vectors: np.ndarray, target_recall: float = DEFAULT_TARGET_RECALL,
         seed: int = 0, queries: int = QUERIES) -> Tuning:
    """The fastest search breadth (nprobe, doubling from 1) at which `index` reaches `target_recall` on queries
    drawn from `vectors` (rows of `ids`); if none does, where recall stops growing (its recall says so). Leaves
    `index` set to it."""
    picked = np.sort(np.random.default_rng(seed).permutation(len(ids))[:queries])
    sample, own = np.ascontiguousarray(vectors[picked], dtype=np.float32), ids[picked]
    if len(sample) == 0:
        return Tuning(None, 1.0, 0, 0.0, target_recall)
    _, positions = faiss.knn(sample, np.ascontiguousarray(vectors, dtype=np.float32), min(K + 1, len(ids)),
                             metric=faiss.METRIC_INNER_PRODUCT)
    exact = _without_self(np.where(positions >= 0, ids[np.maximum(positions, 0)], -1), own)
    lists = index.lists
    if lists is None:
        recall, ms = measure_recall(index, sample, own, exact)
        return Tuning(None, recall, len(sample), ms, target_recall)
    nprobe, best = 1, None
    while True:
        index.set_nprobe(nprobe)
        recall, ms = measure_recall(index, sample, own, exact)
        if best is not None and recall - best.recall_at_10 < PLATEAU:
            index.set_nprobe(best.nprobe)  # compressed codes cap the recall: searching wider only costs time
            return best
        best = Tuning(nprobe, recall, len(sample), ms, target_recall)
        if recall >= target_recall or nprobe >= lists:
            return best
        nprobe = min(lists, nprobe * 2)
