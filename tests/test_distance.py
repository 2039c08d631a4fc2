"""The reported distance of unit vectors, the range-search radius of a threshold, and the FAISS factory."""

from __future__ import annotations

import faiss
import numpy as np

from retrieval.decisions.dedup import pairs_within
from retrieval.vectors.faiss_factory import EXACT, new_faiss_index
from retrieval.vectors.unit_distance import (distance_between, paired_distances, pairwise_distances,
                                             squared_l2_from_scores)


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def brute_force(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Squared L2 by its definition, in float64."""
    difference = first.astype(np.float64)[:, None, :] - second.astype(np.float64)[None, :, :]
    return (difference ** 2).sum(axis=2)


def test_distances_are_squared_l2_between_unit_vectors() -> None:
    rng = np.random.default_rng(0)
    first, second = unit(rng.standard_normal((20, 16))), unit(rng.standard_normal((7, 16)))
    expected = brute_force(first, second)
    assert np.allclose(pairwise_distances(first, second), expected, atol=1e-5)
    assert np.allclose(paired_distances(first[:7], second), expected[np.arange(7), np.arange(7)], atol=1e-5)
    assert abs(distance_between(first[3], second[5]) - expected[3, 5]) < 1e-5


def test_identical_vectors_are_at_distance_zero_never_below() -> None:
    just_over_one = np.nextafter(np.float32(1), np.float32(2))
    assert squared_l2_from_scores(np.array([just_over_one, 1.0], dtype=np.float32)).tolist() == [0.0, 0.0]
    vectors = unit(np.random.default_rng(1).standard_normal((50, 32)))
    for distances in (pairwise_distances(vectors, vectors).diagonal(), paired_distances(vectors, vectors),
                      np.array([distance_between(v, v) for v in vectors])):
        assert (distances >= 0).all() and (distances < 1e-6).all()


def test_range_search_finds_a_pair_exactly_at_the_threshold_and_not_one_just_beyond() -> None:
    threshold = 0.3
    at, beyond = 1 - threshold / 2, 1 - (threshold + 1e-4) / 2  # the inner products of the two pairs
    vectors = np.zeros((4, 4), dtype=np.float32)
    vectors[0, 0], vectors[1, :2] = 1, (at, np.sqrt(1 - at ** 2))
    vectors[2, 2], vectors[3, 2:] = 1, (beyond, np.sqrt(1 - beyond ** 2))
    first, second, distances = pairs_within(vectors, threshold)
    assert list(zip(first.tolist(), second.tolist())) == [(0, 1)]
    assert abs(float(distances[0]) - threshold) < 1e-6


def test_exact_copies_are_found_at_threshold_zero() -> None:
    vectors = unit(np.random.default_rng(2).standard_normal((50, 32)))
    first, second, distances = pairs_within(np.concatenate([vectors, vectors]), 0.0)
    assert sorted(zip(first.tolist(), second.tolist())) == [(i, i + 50) for i in range(50)]
    assert (distances < 1e-6).all()  # float32 puts some copies a hair over 0: still found at threshold 0


def test_factory_builds_an_exact_inner_product_index() -> None:
    rng = np.random.default_rng(3)
    stored, queries = unit(rng.standard_normal((200, 16))), unit(rng.standard_normal((5, 16)))
    ids = np.arange(1000, 1200, dtype=np.int64)
    index = new_faiss_index(16, EXACT, ids=True)
    assert index.metric_type == faiss.METRIC_INNER_PRODUCT
    index.add_with_ids(stored, ids)
    scores, found = index.search(queries, 3)
    expected = np.argsort(-(queries.astype(np.float64) @ stored.T.astype(np.float64)), axis=1)[:, :3]
    assert (found == ids[expected]).all()
    assert np.allclose(squared_l2_from_scores(scores), brute_force(queries, stored)[np.arange(5)[:, None], expected],
                       atol=1e-5)
    positions = new_faiss_index(16, EXACT)
    positions.add(stored)
    assert (positions.search(queries, 3)[1] == expected).all()
