"""Scores of a near-duplicate set, from one matrix of pairwise distances (smaller = more alike).

The set holds originals and their edited copies (`group` ties a copy to its original). For every copy:

  recall@1        its nearest image, among every original and every copy of the other photos (its own sibling
                  copies left out), is its original
  TPR @ FPR 1e-3  (copy, its original) pairs accepted at the distance where 0.1 % of the (copy, another original)
                  pairs are accepted
  dedup P / R / F1  the groups `simsearch dedup` would make at a threshold (connected components of every pair
                  within it, over the whole set): precision and recall of the pairs that share a group

Distances are squared L2 for embeddings and Hamming distances for pHash; any monotone distance works.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrieval.vectors.unit_distance import scores_from_squared_l2, squared_l2_from_scores

FPR = 1e-3


@dataclass(frozen=True)
class Scores:
    recall_at_1: float
    tpr_at_fpr: float
    copies: int


@dataclass(frozen=True)
class DedupScores:
    precision: float
    recall: float
    f1: float
    threshold: float


def copy_scores(distances: np.ndarray, groups: np.ndarray, originals: np.ndarray, chosen: np.ndarray) -> Scores:
    """recall@1 and TPR at FPR 1e-3 of the copies where `chosen` is true."""
    original_row = {int(groups[i]): int(i) for i in np.flatnonzero(originals)}
    original_ids = np.flatnonzero(originals)
    copies = np.flatnonzero(~originals & chosen)
    hits, positives, negatives = [], [], []
    for q in copies:
        row = distances[q].astype(np.float64).copy()
        row[(groups == groups[q]) & ~originals] = np.inf  # itself and its sibling copies
        own = original_row[int(groups[q])]
        hits.append(int(np.argmin(row)) == own)
        positives.append(distances[q, own])
        others = original_ids[groups[original_ids] != groups[q]]
        negatives.append(distances[q, others])
    negative = np.concatenate(negatives)
    limit = np.quantile(negative, FPR, method="lower")  # accepts at most FPR of the different pairs
    tpr = float(np.mean(np.array(positives) < limit)) if np.mean(negative < limit) <= FPR else 0.0
    return Scores(float(np.mean(hits)), tpr, len(copies))


def pair_distances(distances: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances of every same-group pair and of every different-group pair (i < j) of the set."""
    first, second = np.triu_indices(len(groups), k=1)
    same = groups[first] == groups[second]
    values = distances[first, second]
    return values[same], values[~same]


def dedup_scores(distances: np.ndarray, groups: np.ndarray, threshold: float) -> DedupScores:
    """Pair precision / recall / F1 of the connected components of the pairs within `threshold`."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    first, second = np.triu_indices(len(groups), k=1)
    linked = distances[first, second] <= threshold
    graph = coo_matrix((np.ones(int(linked.sum())), (first[linked], second[linked])), shape=(len(groups),) * 2)
    _, component = connected_components(graph, directed=False)
    predicted = component[first] == component[second]
    truth = groups[first] == groups[second]
    true_positives = int(np.sum(predicted & truth))
    precision = true_positives / max(1, int(predicted.sum()))
    recall = true_positives / max(1, int(truth.sum()))
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return DedupScores(precision, recall, f1, threshold)


def normalised(distances: np.ndarray, background: np.ndarray, beta: float, k: int = 3) -> np.ndarray:
    """SSCD's score normalisation on squared-L2 distances of unit vectors: each pair's similarity minus `beta` times
    the mean of its two members' mean similarity to their `k` nearest background images (`background`: the
    (N, B) distances of the set to a background set of photos outside it), made a distance again."""
    similarity = scores_from_squared_l2(distances)
    nearest = np.sort(scores_from_squared_l2(background), axis=1)[:, -k:].mean(axis=1)
    adjusted = similarity - beta * (nearest[:, None] + nearest[None, :]) / 2.0
    return squared_l2_from_scores(adjusted)
