"""Score embeddings of a labelled set: few-shot episodes, verification ROC AUC, retrieval metrics.

The verification pairs come from the one pair sampler (`retrieval.decisions.calibration.sample_calibration_pairs`),
which numbers pairs without listing them: `eval` on one class of thousands of images allocates the sample, not every
pair."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from retrieval.decisions.calibration import sample_calibration_pairs
from retrieval.evaluation.episodes import episode_accuracy, sample_episodes
from retrieval.evaluation.metrics import RetrievalScores, retrieval_scores, roc_auc
from retrieval.evaluation.stats import Estimate


@dataclass(frozen=True)
class LabelledReport:
    episodes: Estimate
    way: int
    shot: int
    verification_auc: float
    pairs: int
    retrieval: RetrievalScores


def evaluate_labelled(embeddings: np.ndarray, labels: np.ndarray, *, way: int = 20, shot: int = 1,
                      episodes: int = 400, pairs: int = 5000, seed: int = 0) -> LabelledReport:
    """Everything `simsearch eval` reports on a labelled folder; `way` is capped at the number of classes."""
    way = min(way, int(labels.max()) + 1)
    drawn = sample_episodes(torch.from_numpy(labels), way, shot, 1, episodes, seed=seed)
    accuracy = episode_accuracy(torch.from_numpy(embeddings), drawn)
    first, second, same = sample_calibration_pairs(labels, negatives=pairs, seed=seed, max_same=pairs)
    distances = ((embeddings[first] - embeddings[second]) ** 2).sum(axis=1)
    auc = roc_auc(distances[same], distances[~same])
    return LabelledReport(accuracy, way, shot, auc, int(same.sum()), retrieval_scores(embeddings, labels))
