"""Score embeddings of a labelled set: few-shot episodes, verification ROC AUC, retrieval metrics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from retrieval.evaluation.episodes import episode_accuracy, sample_episodes
from retrieval.evaluation.stats import Estimate
from retrieval.metrics import RetrievalScores, retrieval_scores, roc_auc


@dataclass(frozen=True)
class PairSample:
    first: np.ndarray
    second: np.ndarray
    same: np.ndarray


@dataclass(frozen=True)
class LabelledReport:
    episodes: Estimate
    way: int
    shot: int
    verification_auc: float
    pairs: int
    retrieval: RetrievalScores


def sample_pairs(labels: np.ndarray, count: int, seed: int) -> PairSample:
    """Up to `count` same-label pairs (all of them when there are fewer) and `count` different-label pairs."""
    rng = np.random.default_rng(seed)
    same_first, same_second = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        i, j = np.triu_indices(len(members), k=1)
        same_first.append(members[i])
        same_second.append(members[j])
    first, second = np.concatenate(same_first), np.concatenate(same_second)
    if len(first) > count:
        keep = rng.choice(len(first), size=count, replace=False)
        first, second = first[keep], second[keep]
    a = rng.integers(0, len(labels), size=4 * count)
    b = rng.integers(0, len(labels), size=4 * count)
    different = labels[a] != labels[b]
    a, b = a[different][:count], b[different][:count]
    return PairSample(np.concatenate([first, a]), np.concatenate([second, b]),
                      np.concatenate([np.ones(len(first), bool), np.zeros(len(a), bool)]))


def evaluate_labelled(embeddings: np.ndarray, labels: np.ndarray, *, way: int = 20, shot: int = 1,
                      episodes: int = 400, pairs: int = 5000, seed: int = 0) -> LabelledReport:
    """Everything `simsearch eval` reports on a labelled folder; `way` is capped at the number of classes."""
    way = min(way, int(labels.max()) + 1)
    drawn = sample_episodes(torch.from_numpy(labels), way, shot, 1, episodes, seed=seed)
    accuracy = episode_accuracy(torch.from_numpy(embeddings), drawn)
    sample = sample_pairs(labels, pairs, seed)
    distances = ((embeddings[sample.first] - embeddings[sample.second]) ** 2).sum(axis=1)
    auc = roc_auc(distances[sample.same], distances[~sample.same])
    return LabelledReport(accuracy, way, shot, auc, len(sample.same), retrieval_scores(embeddings, labels))
