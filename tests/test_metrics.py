"""Retrieval metrics on hand-made embeddings with answers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.evaluation.metrics import retrieval_scores, roc_auc


def unit(*angles_deg: float) -> np.ndarray:
    a = np.radians(angles_deg)
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def test_perfect_clusters_score_one() -> None:
    scores = retrieval_scores(unit(0, 1, 2, 90, 91, 92), [0, 0, 0, 1, 1, 1], ks=(1, 2))
    assert scores.recall_at == {1: 1.0, 2: 1.0}
    assert scores.precision_at_1 == 1.0 and scores.map_at_r == 1.0 and scores.queries == 6


def test_map_at_r_by_hand() -> None:
    # Angles (label): 0 (A), 10 (B), 20 (A), 100 (A), 110 (B), 125 (B); every query has R = 2.
    # Hits among the 2 nearest, and AP@R = (1/2) * sum of precision@i where hit i:
    #   0: 10 B, 20 A -> [F, T] -> 0.25      10: 0 A, 20 A -> [F, F] -> 0
    #  20: 10 B, 0 A  -> [F, T] -> 0.25     100: 110 B, 125 B -> [F, F] -> 0
    # 110: 100 A, 125 B -> [F, T] -> 0.25   125: 110 B, 100 A -> [T, F] -> 0.5
    scores = retrieval_scores(unit(0, 10, 20, 100, 110, 125), [0, 1, 0, 0, 1, 1], ks=(1, 2))
    assert scores.map_at_r == pytest.approx(1.25 / 6)
    assert scores.precision_at_1 == pytest.approx(1 / 6)
    assert scores.recall_at[2] == pytest.approx(4 / 6)


def test_singletons_do_not_query() -> None:
    scores = retrieval_scores(unit(0, 1, 50), [0, 0, 1])
    assert scores.queries == 2 and scores.precision_at_1 == 1.0


@pytest.mark.parametrize("same, different, expected", [
    ([0.1, 0.2], [0.5, 0.6], 1.0),
    ([0.5, 0.6], [0.1, 0.2], 0.0),
    ([0.1, 0.5], [0.3, 0.7], 0.75),
    ([0.3], [0.3], 0.5),
])
def test_roc_auc(same: list[float], different: list[float], expected: float) -> None:
    assert roc_auc(np.array(same), np.array(different)) == pytest.approx(expected)
