"""Retrieval and verification metrics on L2-normalised embeddings.

Definitions follow Musgrave et al. 2020 ("A Metric Learning Reality Check"): every item queries all the others
(never itself); recall@k is the fraction of queries with at least one same-label item among their k nearest;
precision@1 is the fraction whose nearest has their label; MAP@R uses, for a query with R other items of its
label, the R nearest: AP@R = (1/R) * sum over i <= R of precision@i at the positions i that are correct.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from retrieval.vectors.faiss_factory import EXACT, new_faiss_index


@dataclass(frozen=True)
class RetrievalScores:
    recall_at: dict[int, float]
    precision_at_1: float
    map_at_r: float
    queries: int


def _neighbours(embeddings: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k nearest other items of each item, nearest first."""
    index = new_faiss_index(embeddings.shape[1], EXACT)
    index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    _, found = index.search(np.ascontiguousarray(embeddings, dtype=np.float32), k + 1)
    rows = []
    for i, row in enumerate(found):
        others = row[row != i]
        rows.append(others[:k])
    return np.stack(rows)


def retrieval_scores(embeddings: np.ndarray, labels: Sequence[int] | np.ndarray,
                     ks: Sequence[int] = (1, 5)) -> RetrievalScores:
    """Recall@k, precision@1 and MAP@R of retrieving same-label items; items alone in their label
    do not query (they have nothing to find)."""
    labels = np.asarray(labels)
    counts = {label: int(n) for label, n in zip(*np.unique(labels, return_counts=True))}
    relevant = np.array([counts[label] - 1 for label in labels])
    queries = np.flatnonzero(relevant > 0)
    k = min(len(labels) - 1, max(max(ks), int(relevant.max(initial=0))))
    hits = labels[_neighbours(embeddings, k)] == labels[:, None]
    hits = hits[queries]
    r = relevant[queries]
    recall = {kk: float(hits[:, :kk].any(axis=1).mean()) for kk in ks}
    precision_at_1 = float(hits[:, 0].mean())
    positions = np.arange(1, k + 1)
    within_r = positions[None, :] <= r[:, None]
    correct = hits & within_r
    precision_at_i = np.cumsum(correct, axis=1) / positions[None, :]
    map_at_r = float(((precision_at_i * correct).sum(axis=1) / r).mean())
    return RetrievalScores(recall, precision_at_1, map_at_r, len(queries))


def roc_auc(same_distances: np.ndarray, different_distances: np.ndarray) -> float:
    """Area under the ROC curve of deciding "same" by a small distance: the probability that a
    random same pair is closer than a random different pair (ties count half)."""
    same = np.asarray(same_distances, dtype=np.float64)
    different = np.asarray(different_distances, dtype=np.float64)
    _, inverse, counts = np.unique(np.concatenate([same, different]), return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0
    different_ranks = mean_rank[inverse[len(same):]].sum()
    return float((different_ranks - len(different) * (len(different) + 1) / 2) / (len(same) * len(different)))
