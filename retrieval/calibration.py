"""Choose the distance threshold that turns distances into same/different decisions, with bootstrap intervals.

Distances are squared L2 between L2-normalised embeddings; a pair is called "same" when its distance is at most
the threshold. A threshold is always placed halfway between two neighbouring observed distances, so that it does
not sit on a data point whose side a rounding error could flip.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from retrieval.errors import CalibrationError
from retrieval.metrics import roc_auc

Criterion = Literal["accuracy", "eer", "target-fpr"]
CRITERIA: tuple[str, ...] = ("accuracy", "eer", "target-fpr")


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


@dataclass(frozen=True)
class CalibrationResult:
    criterion: str
    threshold: float
    target_fpr: float | None
    roc_auc: float
    accuracy: float
    """Over the pooled pairs, each pair counting once."""
    tpr: float
    fpr: float
    same_pairs: int
    different_pairs: int
    threshold_interval: Interval | None = None
    roc_auc_interval: Interval | None = None
    accuracy_interval: Interval | None = None
    tpr_interval: Interval | None = None
    fpr_interval: Interval | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> CalibrationResult:
        values = dict(data)
        for key in [k for k in values if k.endswith("_interval")]:
            if values[key] is not None:
                values[key] = Interval(**values[key])  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]


def decide(distance: float | np.ndarray, threshold: float) -> bool | np.ndarray:
    """Same (True) when the distance is at most the threshold."""
    return distance <= threshold if isinstance(distance, np.ndarray) else bool(distance <= threshold)


def _check(same: np.ndarray, different: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    same = np.asarray(same, dtype=np.float64).ravel()
    different = np.asarray(different, dtype=np.float64).ravel()
    if len(same) == 0:
        raise CalibrationError("no same pairs to calibrate on (every class needs two images)")
    if len(different) == 0:
        raise CalibrationError("no different pairs to calibrate on (at least two classes are needed)")
    if not (np.isfinite(same).all() and np.isfinite(different).all()):
        raise CalibrationError("distances must be finite")
    return same, different


def _sweep(same: np.ndarray, different: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate thresholds (midpoints between distinct distances, plus one below and one above all) and the
    TPR and FPR at each, from one sort."""
    values = np.unique(np.concatenate([same, different]))
    gaps = (values[:-1] + values[1:]) / 2
    candidates = np.concatenate([[values[0] - 1e-6], gaps, [values[-1] + 1e-6]])
    tpr = np.searchsorted(np.sort(same), candidates, side="right") / len(same)
    fpr = np.searchsorted(np.sort(different), candidates, side="right") / len(different)
    return candidates, tpr, fpr


def choose_threshold(same: np.ndarray, different: np.ndarray, criterion: Criterion = "accuracy",
                     target_fpr: float | None = None) -> float:
    """The threshold by `criterion`:

    - ``accuracy``: the most pairs right (ties: the middle of the best run of candidates);
    - ``eer``: where the false-positive and false-negative rates are closest (equal error rate);
    - ``target-fpr``: the largest threshold whose false-positive rate is at most `target_fpr`; when even the
      nearest different pair is too many, that is a threshold just below it, which may accept no same pair.
    """
    same, different = _check(same, different)
    candidates, tpr, fpr = _sweep(same, different)
    if criterion == "accuracy":
        correct = tpr * len(same) + (1 - fpr) * len(different)
        best = np.flatnonzero(correct == correct.max())
        return float(candidates[best[len(best) // 2]])
    if criterion == "eer":
        return float(candidates[np.argmin(np.abs(fpr - (1 - tpr)))])
    if criterion == "target-fpr":
        if target_fpr is None or not 0 < target_fpr < 1:
            raise CalibrationError(f"the target false-positive rate must be between 0 and 1 (got {target_fpr})")
        allowed = np.flatnonzero(fpr <= target_fpr)
        return float(candidates[allowed[-1]])
    raise CalibrationError(f"unknown criterion {criterion!r} (choose from {', '.join(CRITERIA)})")


def _rates(same: np.ndarray, different: np.ndarray, threshold: float) -> tuple[float, float, float]:
    tpr = float(np.mean(same <= threshold))
    fpr = float(np.mean(different <= threshold))
    accuracy = (tpr * len(same) + (1 - fpr) * len(different)) / (len(same) + len(different))
    return accuracy, tpr, fpr


def _interval(values: list[float]) -> Interval:
    low, high = np.percentile(values, [2.5, 97.5])
    return Interval(float(low), float(high))


def calibrate(same: np.ndarray, different: np.ndarray, criterion: Criterion = "accuracy",
              target_fpr: float | None = None, bootstrap: int = 1000, seed: int = 0) -> CalibrationResult:
    """Threshold and metrics on all pairs, with 95 % percentile-bootstrap intervals.

    Each resample draws same and different pairs separately with replacement and chooses its own threshold,
    so the threshold's interval shows how much it depends on the sample.
    """
    same, different = _check(same, different)
    threshold = choose_threshold(same, different, criterion, target_fpr)
    accuracy, tpr, fpr = _rates(same, different, threshold)
    result = CalibrationResult(criterion, threshold, target_fpr, roc_auc(same, different), accuracy, tpr, fpr,
                               len(same), len(different))
    if bootstrap <= 0:
        return result
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {"threshold": [], "roc_auc": [], "accuracy": [], "tpr": [], "fpr": []}
    for _ in range(bootstrap):
        s = same[rng.integers(0, len(same), len(same))]
        d = different[rng.integers(0, len(different), len(different))]
        t = choose_threshold(s, d, criterion, target_fpr)
        a, p, n = _rates(s, d, t)
        for key, value in zip(draws, (t, roc_auc(s, d), a, p, n)):
            draws[key].append(value)
    return CalibrationResult(
        criterion, threshold, target_fpr, result.roc_auc, accuracy, tpr, fpr, len(same), len(different),
        **{f"{key}_interval": _interval(values) for key, values in draws.items()},
    )


MAX_SAME_PAIRS = 200_000


def sample_calibration_pairs(labels: np.ndarray, negatives: int | None = None, seed: int = 0,
                             max_same: int = MAX_SAME_PAIRS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first, second, same) index arrays: every same-label pair ``i < j`` (a seeded sample of `max_same` of
    them when there are more: 1000 images of a class alone make half a million), and a seeded sample of
    distinct different-label pairs (default: as many as the same pairs, at least 1000 where that many exist)."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise CalibrationError(f"calibration needs at least two classes (found {len(classes)})")
    if counts.max() < 2:
        raise CalibrationError("calibration needs a class with at least two images")
    same_first, same_second = [], []
    for label in classes[counts > 1]:
        members = np.flatnonzero(labels == label)
        i, j = np.triu_indices(len(members), k=1)
        same_first.append(members[i])
        same_second.append(members[j])
    first, second = np.concatenate(same_first), np.concatenate(same_second)
    rng = np.random.default_rng(seed)
    if len(first) > max_same:
        keep = np.sort(rng.choice(len(first), size=max_same, replace=False))
        first, second = first[keep], second[keep]
    available = (len(labels) ** 2 - int((counts ** 2).sum())) // 2
    wanted = min(available, negatives if negatives is not None else max(len(first), 1000))
    chosen: set[tuple[int, int]] = set()
    while len(chosen) < wanted:
        a = rng.integers(0, len(labels), 2 * (wanted - len(chosen)) + 16)
        b = rng.integers(0, len(labels), len(a))
        keep = labels[a] != labels[b]
        for x, y in zip(np.minimum(a, b)[keep].tolist(), np.maximum(a, b)[keep].tolist()):
            if len(chosen) == wanted:
                break
            chosen.add((x, y))
    negative = np.array(sorted(chosen), dtype=np.int64).reshape(-1, 2)
    return (np.concatenate([first, negative[:, 0]]), np.concatenate([second, negative[:, 1]]),
            np.concatenate([np.ones(len(first), bool), np.zeros(len(negative), bool)]))
