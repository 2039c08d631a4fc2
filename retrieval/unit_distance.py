"""The distance simsearch reports and thresholds: squared L2 between L2-normalised vectors, from inner products.

For unit vectors ``|a - b|^2 = 2 - 2 a.b``, so an inner-product index finds the neighbours and its scores become
distances here. Rounding can put the inner product of a vector with itself (or with a copy) just over 1, so the
distance is clipped at 0. It is the quantity the triplet loss is trained on and calibrated thresholds are in;
training computes it on tensors, from any vectors (``retrieval/distances.py``).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

DISTANCE_DIGITS = 6
"""Decimals of a distance in the results' `to_dict()` (what `--json` and an HTTP API show)."""
RANGE_SEARCH_SLACK = 1e-6
"""How far below the exact inner product a range-search radius is put: FAISS keeps only scores strictly above
the radius, and a float32 inner product is off by about 1e-7, so a pair exactly at the threshold (two copies at
threshold 0) would otherwise be missed."""


def squared_l2_from_scores(scores: ArrayLike) -> np.ndarray:
    """The distances of the inner products `scores` of unit vectors (in their dtype), clipped at 0."""
    return np.clip(2.0 - 2.0 * np.asarray(scores), 0.0, None)


def scores_from_squared_l2(distances: ArrayLike) -> np.ndarray:
    """The inner products of unit vectors at `distances`: the inverse of `squared_l2_from_scores` above 0."""
    return 1.0 - np.asarray(distances) / 2.0


def pairwise_distances(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(N, M) distances between each row of `first` (N, D) and each row of `second` (M, D)."""
    return squared_l2_from_scores(first @ second.T)


def paired_distances(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(N,) distances between row i of `first` (N, D) and row i of `second` (N, D)."""
    return squared_l2_from_scores(np.sum(first * second, axis=1))


def distance_between(first: np.ndarray, second: np.ndarray) -> float:
    """The distance between two unit vectors (D,)."""
    return float(squared_l2_from_scores(np.float64(first @ second)))


def radius_for_threshold(threshold: float) -> float:
    """The inner-product radius of a range search that finds every pair within distance `threshold`."""
    return float(scores_from_squared_l2(threshold)) - RANGE_SEARCH_SLACK
