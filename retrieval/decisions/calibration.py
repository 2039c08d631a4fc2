"""Choose the distance threshold that turns distances into same/different decisions, with bootstrap intervals.

Distances are squared L2 between L2-normalised embeddings; a pair is called "same" when its distance is at most
the threshold. A threshold is always placed halfway between two neighbouring observed distances (or `MARGIN`
beyond the smallest or largest), so that it does not sit on a data point whose side a rounding error could flip.

Everything works on the sorted distinct distances and counts of pairs at each: one sort for the full data, and
for the bootstrap a block of resamples at a time as rows of counts over the same distinct distances.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal, get_args

import numpy as np

from retrieval.decisions.false_pairs import curve_thresholds, false_pair_curve
from retrieval.errors import ArgumentTypeError, CalibrationError, ModelError
from retrieval.evaluation.metrics import roc_auc
from retrieval.models.model_spec import MAX_DISTANCE, FalsePairRate, PrecisionLevel, false_pair_rates_from_dicts

Criterion = Literal["accuracy", "eer", "target-fpr"]
CRITERIA: tuple[str, ...] = get_args(Criterion)
MARGIN = 1e-6
"""How far beyond the smallest or largest distance a threshold outside all of them is placed."""
MAX_SAME_PAIRS = 200_000
PRECISION_LEVELS: tuple[float, ...] = (0.9, 0.95, 0.99, 0.999)
"""The precision levels a calibration measures thresholds at."""
DEFAULT_PRECISION = 0.999
"""The level of a model's shipped calibration that decisions use when no precision is asked for, where the
calibration has precision levels alone (one with a false-pair curve decides at the curve's default, chosen by the
false pairs it means in a collection: `retrieval.decisions.false_pairs`): the strictest, because precision falls as a
collection grows (its different pairs grow with the square of its size, its
duplicates do not), and dedup groups chain. On the near-duplicate benchmark's test split, 3 times the size of the
validation split the levels are measured on, the 0.99 level grouped pairs with precision 0.08; 0.999 is kept."""
_CELLS = 1 << 20
"""Resamples times distinct distances held at once by the bootstrap (a few arrays of this many int64)."""


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
    levels: tuple[PrecisionLevel, ...] = ()
    """The thresholds at the `PRECISION_LEVELS` the pairs reach (`precision_levels`)."""
    false_pairs: tuple[FalsePairRate, ...] = ()
    """The measured false-pair rate (with its Clopper-Pearson upper end) and recall on a grid of thresholds and at
    the chosen one and the levels' (`retrieval.decisions.false_pairs.false_pair_curve`): how many false pairs a
    threshold means in a collection of N images."""

    def to_dict(self) -> dict[str, object]:
        """Plain floats, ints, strings and None (intervals as ``{"low", "high"}``, levels as a list of
        ``{"precision", "threshold", "recall"}``, false pairs as a list of ``{"threshold", "fpr", "fpr_upper",
        "recall"}``), ready for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> CalibrationResult:
        values = dict(data)
        for key in [k for k in values if k.endswith("_interval")]:
            if values[key] is not None:
                values[key] = Interval(**values[key])  # type: ignore[arg-type]
        values["levels"] = levels_from_dicts(values.get("levels", ()))  # type: ignore[arg-type]
        values["false_pairs"] = stored_false_pairs(values)
        return cls(**values)  # type: ignore[arg-type]


def levels_from_dicts(levels: Sequence[dict[str, float]]) -> tuple[PrecisionLevel, ...]:
    """The levels of a `CalibrationResult.to_dict` (stored in the index, so written by this code)."""
    return tuple(PrecisionLevel(**level) for level in levels)


def stored_false_pairs(metrics: dict[str, object]) -> tuple[FalsePairRate, ...]:
    """The false-pair curve of a `CalibrationResult.to_dict` (none in a calibration stored before they were);
    `CalibrationError` for one that is not a curve."""
    points = metrics.get("false_pairs") or []
    if not points:
        return ()
    try:
        return false_pair_rates_from_dicts(points)
    except ModelError as exc:
        raise CalibrationError(f"the stored calibration's false-pair curve is broken: {exc}") from exc


def decide(distance: float | np.ndarray, threshold: float) -> bool | np.ndarray:
    """Same (True) when the distance is at most the threshold: the one same/different rule, which `verify`,
    `classify`, streaming dedup and the dedup range search (`retrieval.vectors.unit_distance.radius_for_threshold`)
    keep."""
    return distance <= threshold if isinstance(distance, np.ndarray) else bool(distance <= threshold)


def choose_threshold(same: np.ndarray, different: np.ndarray, criterion: Criterion = "accuracy",
                     target_fpr: float | None = None) -> float:
    """The threshold by `criterion`:

    - ``accuracy``: the most pairs right (ties: the middle of the best candidates);
    - ``eer``: where the false-positive and false-negative rates are closest (equal error rate);
    - ``target-fpr``: the largest threshold whose false-positive rate is at most `target_fpr`; when even the
      nearest different pair is too many, that is a threshold just below it, which may accept no same pair
      (and lies below zero when a different pair is the nearest of all).
    """
    _check_criterion(criterion, target_fpr)
    same, different = _check(same, different)
    sweep = _Sweep.of(*_unit_counts(same, different))
    return float(sweep.thresholds(sweep.choose(criterion, target_fpr))[0])


def calibrate(same: np.ndarray, different: np.ndarray, criterion: Criterion = "accuracy",
              target_fpr: float | None = None, bootstrap: int = 1000, seed: int = 0) -> CalibrationResult:
    """Threshold and metrics on all pairs, with 95 % percentile-bootstrap intervals (none when `bootstrap` is 0).

    Each resample draws same and different pairs separately with replacement and chooses its own threshold,
    so the threshold's interval shows how much it depends on the sample.
    """
    _check_criterion(criterion, target_fpr)
    same, different = _check(same, different)
    values, same_counts, different_counts = _unit_counts(same, different)
    sweep = _Sweep.of(values, same_counts, different_counts)
    column = sweep.choose(criterion, target_fpr)
    accuracy, tpr, fpr = (float(rate[0]) for rate in sweep.rates(column))
    intervals = {}
    if bootstrap > 0:
        draws = _bootstrap(same, different, criterion, target_fpr, bootstrap, np.random.default_rng(seed))
        intervals = {f"{name}_interval": _interval(values) for name, values in draws.items()}
    threshold = float(sweep.thresholds(column)[0])
    levels = _levels(sweep, PRECISION_LEVELS)
    shown = [t for t in (threshold, *(level.threshold for level in levels)) if 0 <= t <= MAX_DISTANCE]
    return CalibrationResult(criterion, threshold, target_fpr if criterion == "target-fpr" else None,
                             roc_auc(same, different), accuracy, tpr, fpr, len(same), len(different), **intervals,
                             levels=levels, false_pairs=false_pair_curve(different, same, curve_thresholds(*shown)))


def precision_levels(same: np.ndarray, different: np.ndarray,
                     precisions: Sequence[float] = PRECISION_LEVELS) -> tuple[PrecisionLevel, ...]:
    """For each precision level that some threshold reaches, ascending: the largest threshold at which at least
    that share of the pairs within it are same pairs, and the recall there (the share of same pairs within it).
    A level no threshold reaches is left out.

    Precision depends on the mix of pairs: measured with as many different pairs as same ones, it is higher
    than over a whole collection, where different pairs outnumber the same ones by far.
    """
    for precision in precisions:
        if isinstance(precision, bool) or not isinstance(precision, numbers.Real) or not 0 < precision <= 1:
            raise CalibrationError(f"a precision level must be a number in (0, 1] (got {precision!r})")
    return _levels(_Sweep.of(*_unit_counts(*_check(same, different))), precisions)


def _levels(sweep: _Sweep, precisions: Sequence[float]) -> tuple[PrecisionLevel, ...]:
    """The levels of a one-row sweep; column 0, which accepts no pair, has no precision."""
    true_pos, false_pos = sweep.true_pos[0, 1:], sweep.false_pos[0, 1:]
    precision = true_pos / (true_pos + false_pos)
    levels = []
    for level in sorted(set(precisions)):
        reached = np.flatnonzero(precision >= level)
        if len(reached):
            column = int(reached[-1]) + 1
            threshold = float(sweep.thresholds(np.array([column]))[0])
            # Beyond the largest distance, `MARGIN` may pass the largest possible one; both accept every pair.
            levels.append(PrecisionLevel(float(level), min(threshold, MAX_DISTANCE),
                                         float(true_pos[column - 1] / sweep.same)))
    return tuple(levels)


def level_at(levels: Sequence[PrecisionLevel], precision: float, where: str) -> PrecisionLevel:
    """The level of `levels` measured at `precision`; `CalibrationError` listing the measured ones when it is none.
    `where` names the calibration in the message ("the model's shipped calibration")."""
    if isinstance(precision, bool) or not isinstance(precision, numbers.Real):
        raise ArgumentTypeError(f"precision must be a number, got {type(precision).__name__} {precision!r}")
    for level in levels:
        if math.isclose(level.precision, precision, rel_tol=1e-9):
            return level
    measured = (f"it measured {', '.join(f'{level.precision:g}' for level in levels)}" if levels else
                "it measured no precision level (calibrate again to measure them, or give a threshold)")
    raise CalibrationError(f"{where} has no threshold at precision {precision:g}; {measured}")


def _check_criterion(criterion: str, target_fpr: float | None) -> None:
    if criterion not in CRITERIA:
        raise CalibrationError(f"unknown criterion {criterion!r} (choose from {', '.join(CRITERIA)})")
    if criterion == "target-fpr" and (target_fpr is None or not 0 < target_fpr < 1):
        raise CalibrationError(f"the target false-positive rate must be between 0 and 1 (got {target_fpr})")


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


def _unit_counts(same: np.ndarray, different: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct distances and one row of how many same and different pairs lie at each."""
    values, codes = np.unique(np.concatenate([same, different]), return_inverse=True)
    return (values, np.bincount(codes[:len(same)], minlength=len(values))[None, :],
            np.bincount(codes[len(same):], minlength=len(values))[None, :])


def _row_counts(codes: np.ndarray, size: int) -> np.ndarray:
    """How often each of `size` codes occurs in each row of `codes`."""
    rows = len(codes)
    flat = (codes + size * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * size).reshape(rows, size)


@dataclass(frozen=True)
class _Sweep:
    """Candidate thresholds of samples of pairs over shared distinct distances, one sample per row.

    Column 0 is the candidate below every distance; column ``k + 1`` lies just above ``values[k]`` and is a
    candidate only where the row holds that distance. `true_pos` and `false_pos` count the same and different
    pairs accepted at each column.
    """

    values: np.ndarray
    candidate: np.ndarray
    true_pos: np.ndarray
    false_pos: np.ndarray
    same: int
    different: int

    @classmethod
    def of(cls, values: np.ndarray, same_counts: np.ndarray, different_counts: np.ndarray) -> _Sweep:
        def accepted(counts: np.ndarray) -> np.ndarray:
            return np.concatenate([np.zeros((len(counts), 1), np.int64), np.cumsum(counts, axis=1)], axis=1)

        present = (same_counts + different_counts) > 0
        candidate = np.concatenate([np.ones((len(present), 1), bool), present], axis=1)
        return cls(values, candidate, accepted(same_counts), accepted(different_counts),
                   int(same_counts[0].sum()), int(different_counts[0].sum()))

    def choose(self, criterion: str, target_fpr: float | None) -> np.ndarray:
        """The chosen column of each row."""
        tpr, fpr = self.true_pos / self.same, self.false_pos / self.different
        if criterion == "accuracy":
            correct = np.where(self.candidate, self.true_pos - self.false_pos, np.iinfo(np.int64).min)
            best = correct == correct.max(axis=1, keepdims=True)
            middle = best.sum(axis=1) // 2
            return np.argmax(np.cumsum(best, axis=1) > middle[:, None], axis=1)
        if criterion == "eer":
            return np.argmin(np.where(self.candidate, np.abs(fpr - (1 - tpr)), np.inf), axis=1)
        allowed = self.candidate & (fpr <= target_fpr)
        return allowed.shape[1] - 1 - np.argmax(allowed[:, ::-1], axis=1)

    def thresholds(self, column: np.ndarray) -> np.ndarray:
        """The distance of each row's chosen column: halfway between the distances the row holds either side."""
        size = len(self.values)
        held = np.where(self.candidate[:, 1:], np.arange(size), size)
        upper = np.minimum.accumulate(held[:, ::-1], axis=1)[:, ::-1]
        upper = np.concatenate([upper, np.full((len(upper), 1), size)], axis=1)[np.arange(len(column)), column]
        padded = np.concatenate([self.values, [np.nan]])
        below, above = padded[column - 1], padded[upper]
        return np.where(column == 0, above - MARGIN, np.where(upper == size, below + MARGIN, (below + above) / 2))

    def rates(self, column: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Accuracy, TPR and FPR of each row at its chosen column."""
        rows = np.arange(len(column))
        true_pos, false_pos = self.true_pos[rows, column], self.false_pos[rows, column]
        accuracy = (true_pos + self.different - false_pos) / (self.same + self.different)
        return accuracy, true_pos / self.same, false_pos / self.different


def _weighted_auc(same_counts: np.ndarray, different_counts: np.ndarray) -> np.ndarray:
    """`retrieval.evaluation.metrics.roc_auc` of each row of counts over shared ascending distinct distances."""
    closer_same = np.cumsum(same_counts, axis=1) - same_counts
    wins = (different_counts * (closer_same + same_counts / 2)).sum(axis=1)
    return wins / (same_counts[0].sum() * different_counts[0].sum())


def _bootstrap(same: np.ndarray, different: np.ndarray, criterion: str, target_fpr: float | None, resamples: int,
               rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Threshold, ROC AUC, accuracy, TPR and FPR of each resample, a block of resamples at a time."""
    values, codes = np.unique(np.concatenate([same, different]), return_inverse=True)
    same_codes, different_codes = codes[:len(same)], codes[len(same):]
    block = max(1, _CELLS // len(values))
    parts: list[tuple[np.ndarray, ...]] = []
    for start in range(0, resamples, block):
        rows = min(block, resamples - start)
        same_counts = _row_counts(same_codes[rng.integers(0, len(same), (rows, len(same)))], len(values))
        different_counts = _row_counts(different_codes[rng.integers(0, len(different), (rows, len(different)))],
                                       len(values))
        sweep = _Sweep.of(values, same_counts, different_counts)
        column = sweep.choose(criterion, target_fpr)
        parts.append((sweep.thresholds(column), _weighted_auc(same_counts, different_counts), *sweep.rates(column)))
    names = ("threshold", "roc_auc", "accuracy", "tpr", "fpr")
    return {name: np.concatenate(found) for name, found in zip(names, zip(*parts))}


def _interval(values: np.ndarray) -> Interval:
    low, high = np.percentile(values, [2.5, 97.5])
    return Interval(float(low), float(high))


def sample_calibration_pairs(labels: np.ndarray, negatives: int | None = None, seed: int = 0,
                             max_same: int = MAX_SAME_PAIRS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first, second, same) index arrays, ``first < second``: every same-label pair (a seeded sample of
    `max_same` of them when there are more: 1000 images of a class alone make half a million), and a seeded
    sample of distinct different-label pairs (default: as many as the same pairs, at least 1000 where that many
    exist).

    Pairs are numbered without being listed, so the different pairs are a uniform sample without replacement
    drawn in memory proportional to the sample, however many images there are.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise CalibrationError(f"calibration needs at least two classes (found {len(classes)})")
    if counts.max() < 2:
        raise CalibrationError("calibration needs a class with at least two images")
    if negatives is not None and negatives < 1:
        raise CalibrationError(f"the number of different pairs must be positive (got {negatives})")
    order = np.argsort(labels, kind="stable")
    position = np.arange(len(labels))
    class_end = np.repeat(np.cumsum(counts), counts)
    rng = np.random.default_rng(seed)
    same_pairs = _PairSpace(order, position + 1, class_end - position - 1)
    first, second = same_pairs.take(same_pairs.sample(max_same, rng))
    different_pairs = _PairSpace(order, class_end, len(labels) - class_end)
    wanted = negatives if negatives is not None else max(len(first), 1000)
    other_first, other_second = different_pairs.take(different_pairs.sample(wanted, rng))
    return (np.concatenate([first, other_first]), np.concatenate([second, other_second]),
            np.concatenate([np.ones(len(first), bool), np.zeros(len(other_first), bool)]))


@dataclass(frozen=True)
class _PairSpace:
    """The pairs ``(order[p], order[q])`` with ``start[p] <= q < start[p] + count[p]``, numbered p-major."""

    order: np.ndarray
    start: np.ndarray
    count: np.ndarray

    @property
    def size(self) -> int:
        return int(self.count.sum())

    def sample(self, most: int, rng: np.random.Generator) -> np.ndarray:
        """Numbers of all pairs, or of a seeded sample of `most` of them, ascending."""
        if self.size <= most:
            return np.arange(self.size)
        return np.sort(rng.choice(self.size, size=most, replace=False))

    def take(self, numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ends = np.cumsum(self.count)
        p = np.searchsorted(ends, numbers, side="right")
        q = self.start[p] + numbers - (ends[p] - self.count[p])
        a, b = self.order[p], self.order[q]
        return np.minimum(a, b), np.maximum(a, b)
