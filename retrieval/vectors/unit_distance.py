"""The distance simsearch reports and thresholds: squared L2 between L2-normalised vectors, from inner products.

For unit vectors ``|a - b|^2 = 2 - 2 a.b``, so an inner-product index finds the neighbours and its scores become
distances here. Rounding can put the inner product of a vector with itself (or with a copy) just over 1, so the
distance is clipped at 0. It is the quantity the triplet loss is trained on and calibrated thresholds are in;
training computes it on tensors, from any vectors (``retrieval/vectors/distances.py``).

People read a cosine similarity more easily (1 the same, 0 unrelated): for unit vectors ``cos = a.b = 1 - d / 2``.
`cosine_similarity` and `threshold_for_similarity` are the one place that conversion is made for what is shown and
for `--similarity`.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from numpy.typing import ArrayLike

from retrieval.errors import ArgumentTypeError, InvalidArgumentError

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


SIMILARITY_THRESHOLD_DIGITS = 12
"""Decimals a threshold made from a similarity is rounded to, far below float32's 1e-7: `--similarity 0.9` is then
exactly `--threshold 0.2` (2 - 2 * 0.9 is 0.19999999999999996 in floating point)."""


def cosine_similarity(distance: float) -> float:
    """The cosine similarity of two unit vectors `distance` (squared L2) apart: ``1 - distance / 2``."""
    return float(scores_from_squared_l2(distance))


def json_similarity(distance: float) -> float:
    """The cosine similarity at `distance`, rounded as JSON and CSV distances are (`DISTANCE_DIGITS`)."""
    return round(cosine_similarity(distance), DISTANCE_DIGITS)


def with_similarity(value: object) -> object:
    """A result's JSON (`to_dict()`, lists and dicts of them) with the cosine similarity beside each distance:
    `similarity` after every `distance`, `threshold_similarity` after every `threshold` (None beside None). The
    command line's `--json` and the server's answers show distances so."""
    if isinstance(value, list):
        return [with_similarity(item) for item in value]
    if not isinstance(value, dict):
        return value
    shown: dict[object, object] = {}
    for key, item in value.items():
        shown[key] = with_similarity(item)
        beside = {"distance": "similarity", "threshold": "threshold_similarity"}.get(key)  # type: ignore[call-overload]
        if beside is not None and beside not in value and (item is None or isinstance(item, (int, float))):
            shown[beside] = None if item is None else json_similarity(item)
    return shown


def threshold_for_similarity(similarity: object) -> float:
    """The squared-L2 threshold that accepts exactly the pairs of cosine similarity at least `similarity` (a real
    number in [-1, 1]): ``2 - 2 * similarity``, rounded to `SIMILARITY_THRESHOLD_DIGITS` decimals."""
    if isinstance(similarity, bool) or not isinstance(similarity, numbers.Real):
        raise ArgumentTypeError(f"similarity must be a number, got {type(similarity).__name__} {similarity!r}")
    if not math.isfinite(similarity) or not -1.0 <= similarity <= 1.0:
        raise InvalidArgumentError(f"similarity must be a cosine similarity in [-1, 1], got {similarity}")
    return round(float(squared_l2_from_scores(float(similarity))), SIMILARITY_THRESHOLD_DIGITS)


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
