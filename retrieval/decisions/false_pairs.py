"""False pairs: how many different pairs a distance threshold accepts, per pair and in a collection of N images.

A collection of N distinct images holds N(N-1)/2 pairs, nearly all of them different. A threshold that accepts a
share `fpr` of the different pairs (its per-pair false-positive rate) proposes about ``fpr * N(N-1)/2`` false
pairs there: the count grows with the square of the collection, so a rate that is harmless among a thousand
images is not among a hundred thousand. The goal a default threshold is held to is fewer than one false pair per
10,000 images (`GOAL_PER_IMAGE`), that is ``fpr * (N-1)/2 <= 1e-4``, which holds up to `largest_collection`.

A rate is measured on M different pairs as k/M with a Clopper-Pearson interval (exact for the binomial; pairs
that share an image are not independent, so the interval is narrower than the truth where false pairs cluster
around a few images). Far below 1/M nothing can be counted: with none seen, the interval's upper end is about
3.7/M (the rule of three, at 97.5 % one-sided). `TailFit` extrapolates below that from the lower tail of the
different-pair distances instead; whoever ships its figure says so (benchmarks/hard_negatives.py validates it on
held-out pairs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from retrieval.errors import CalibrationError
from retrieval.models.model_spec import FalsePairRate

CONFIDENCE = 0.95
"""Of every interval here: two-sided, so its upper end alone holds at 97.5 %."""
GOAL_PER_IMAGE = 1e-4
"""Expected false pairs per image a default threshold keeps under: one per 10,000 images."""
CURVE_STEP = 0.05
"""The distance between neighbouring thresholds of a false-pair curve."""
CURVE_TOP = 2.0
"""The largest threshold on a curve's grid (cosine similarity 0): beyond it nearly every pair is accepted."""
COLLECTIONS_SHOWN = (1_000, 12_000, 100_000)
"""Collection sizes a calibration's rate is shown for."""
MIN_COUNTED = 10
"""Fewest accepted pairs for which `estimate_rate` takes the measured rate; below it, the tail model's."""
TAIL_PAIRS = 100
"""The nearest different pairs `TailFit` is fitted to."""


@dataclass(frozen=True)
class MeasuredRate:
    """k of M different pairs accepted, and the Clopper-Pearson interval of the rate."""

    accepted: int
    pairs: int
    low: float
    high: float

    @property
    def rate(self) -> float:
        return self.accepted / self.pairs


def clopper_pearson(accepted: int, pairs: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a binomial rate, `accepted` of `pairs`, two-sided."""
    from scipy.stats import beta

    if pairs < 1 or not 0 <= accepted <= pairs:
        raise CalibrationError(f"a rate needs 0 <= accepted <= pairs and pairs >= 1 (got {accepted} of {pairs})")
    tail = (1 - confidence) / 2
    low = 0.0 if accepted == 0 else float(beta.ppf(tail, accepted, pairs - accepted + 1))
    high = 1.0 if accepted == pairs else float(beta.ppf(1 - tail, accepted + 1, pairs - accepted))
    return low, high


def measured_rate(sorted_distances: np.ndarray, threshold: float, pairs: int | None = None) -> MeasuredRate:
    """The share of different pairs at most `threshold` apart (`sorted_distances` ascending; `pairs`, when the
    array holds only the nearest of more, the number of all of them)."""
    total = len(sorted_distances) if pairs is None else pairs
    accepted = int(np.searchsorted(sorted_distances, threshold, side="right"))
    return MeasuredRate(accepted, total, *clopper_pearson(accepted, total))


def expected_false_pairs(fpr: float, images: int) -> float:
    """The false pairs expected among `images` distinct images at a per-pair rate `fpr`: ``fpr * N(N-1)/2``."""
    return fpr * images * (images - 1) / 2


def largest_collection(fpr: float, per_image: float = GOAL_PER_IMAGE) -> int | None:
    """The most images among which `fpr` keeps expected false pairs at most `per_image` per image
    (``fpr * (N-1)/2 <= per_image``); None when the rate is 0 (no limit)."""
    if fpr <= 0:
        return None
    return int(math.floor(1 + 2 * per_image / fpr))


@dataclass(frozen=True)
class TailFit:
    """An exponential model of the lower tail of the different-pair distances.

    Below `anchor`, the distance of the `tail`-th nearest of `pairs` different pairs, the share of different
    pairs within a threshold t is modelled as ``tail/pairs * exp(-(anchor - t) / scale)``, `scale` the mean
    excess ``anchor - d`` of the tail (the maximum-likelihood fit). An exponential tail falls more slowly than a
    Gaussian's or a bounded one's, so where the true tail is lighter, the model overstates the rate; where it is
    heavier (a cluster of close different pairs below the anchor), it understates it, which the held-out check
    of the benchmark looks for.
    """

    anchor: float
    scale: float
    tail: int
    pairs: int

    def rate(self, threshold: float) -> float:
        """The modelled rate at `threshold` (at or above the anchor: the tail's share, which the data measure)."""
        return self.tail / self.pairs * math.exp(-max(0.0, self.anchor - threshold) / self.scale)

    def upper(self, threshold: float, confidence: float = CONFIDENCE) -> float:
        """The rate with the tail's share at its Clopper-Pearson upper end and the scale at the upper end of its
        interval (``2 k scale / scale_true`` is chi-squared with 2k degrees of freedom for an exponential)."""
        from scipy.stats import chi2

        share = clopper_pearson(self.tail, self.pairs, confidence)[1]
        scale = 2 * self.tail * self.scale / float(chi2.ppf((1 - confidence) / 2, 2 * self.tail))
        return share * math.exp(-max(0.0, self.anchor - threshold) / scale)


def fit_tail(sorted_distances: np.ndarray, tail: int, pairs: int | None = None) -> TailFit:
    """`TailFit` of the `tail` nearest of the different pairs (`sorted_distances` ascending; `pairs` as in
    `measured_rate`)."""
    total = len(sorted_distances) if pairs is None else pairs
    if not 2 <= tail <= len(sorted_distances):
        raise CalibrationError(f"a tail of {tail} pairs needs 2 to {len(sorted_distances)}")
    nearest = np.asarray(sorted_distances[:tail], dtype=np.float64)
    anchor = float(nearest[-1])
    scale = float(np.mean(anchor - nearest[:-1]))
    if scale <= 0:
        raise CalibrationError(f"the {tail} nearest different pairs are all {anchor} apart: no tail to fit")
    return TailFit(anchor, scale, tail, total)


def rate_at(points: Sequence[FalsePairRate], threshold: float) -> tuple[FalsePairRate, bool] | None:
    """The point of a false-pair curve that speaks for `threshold`: the point at it (True), else the nearest one
    above it (False: its rate bounds the rate at `threshold`, as a lower threshold accepts no more pairs);
    None when every point lies below it."""
    above = [point for point in points if point.threshold >= threshold - 1e-9]
    if not above:
        return None
    point = min(above, key=lambda p: p.threshold)
    return point, math.isclose(point.threshold, threshold, rel_tol=0, abs_tol=1e-9)


@dataclass(frozen=True)
class RateEstimate:
    """The false-pair rate at a threshold: what was counted, the estimate (`fpr`, by `method`), and an upper end
    that holds for both the count and the model (`fpr_upper`)."""

    threshold: float
    measured: MeasuredRate
    fpr: float
    fpr_upper: float
    method: str
    """"measured" (k/M, where at least `MIN_COUNTED` pairs were accepted) or "tail model"."""


def estimate_rate(sorted_distances: np.ndarray, threshold: float, tail: TailFit | None,
                  pairs: int | None = None) -> RateEstimate:
    """The rate at `threshold`: measured where at least `MIN_COUNTED` pairs are accepted or there is no `tail`,
    else the tail model's; the upper end is the larger of the Clopper-Pearson one and, where the model speaks,
    the model's (`TailFit.upper`), so that it is never below the estimate."""
    measured = measured_rate(sorted_distances, threshold, pairs)
    if tail is None or measured.accepted >= MIN_COUNTED:
        return RateEstimate(threshold, measured, measured.rate, measured.high, "measured")
    modelled = tail.rate(threshold)
    return RateEstimate(threshold, measured, modelled, max(measured.high, tail.upper(threshold), modelled),
                        "tail model")


def curve_thresholds(*extra: float) -> list[float]:
    """The grid ``CURVE_STEP, 2 * CURVE_STEP, ..., CURVE_TOP`` and the `extra` thresholds, ascending, each once."""
    grid = [round(CURVE_STEP * step, 10) for step in range(1, int(round(CURVE_TOP / CURVE_STEP)) + 1)]
    return sorted(set(grid) | {float(t) for t in extra})


def false_pair_curve(different: np.ndarray, same: np.ndarray, thresholds: Sequence[float],
                     tail: TailFit | None = None, pairs: int | None = None) -> tuple[FalsePairRate, ...]:
    """The rate (`estimate_rate`) and the recall (the share of `same` distances within) at each threshold,
    ascending. Where estimates switch between the count and the model, the rate could dip as the threshold
    grows; each point takes the largest rate of any point at or below it, which a larger threshold accepts
    anyway."""
    different = np.sort(np.asarray(different, dtype=np.float64))
    same = np.sort(np.asarray(same, dtype=np.float64))
    if len(same) == 0:
        raise CalibrationError("a false-pair curve needs same pairs for its recall")
    points, fpr, upper = [], 0.0, 0.0
    for threshold in sorted(thresholds):
        estimate = estimate_rate(different, threshold, tail, pairs)
        fpr, upper = max(fpr, estimate.fpr), max(upper, estimate.fpr_upper)
        recall = float(np.searchsorted(same, threshold, side="right") / len(same))
        points.append(FalsePairRate(float(threshold), fpr, upper, recall))
    return tuple(points)


@dataclass(frozen=True)
class CollectionFalsePairs:
    """What a threshold's false-pair rate means among `images` distinct images: the false pairs to expect, and
    whether that keeps under the goal (`GOAL_PER_IMAGE`)."""

    images: int
    threshold: float
    point: FalsePairRate
    """The curve's point that speaks for the threshold (`rate_at`)."""
    exact: bool
    """Whether the point lies at the threshold; else it lies above it, and its rate bounds the threshold's."""
    measured_on: str
    safer: FalsePairRate | None
    """The point of the largest threshold whose rate keeps the goal among these images, where the goal fails and
    some point keeps it."""

    @property
    def expected(self) -> float:
        return expected_false_pairs(self.point.fpr, self.images)

    @property
    def expected_upper(self) -> float:
        return expected_false_pairs(self.point.fpr_upper, self.images)

    @property
    def largest(self) -> int | None:
        """The most images among which this rate keeps the goal (None: any number)."""
        return largest_collection(self.point.fpr)

    @property
    def holds(self) -> bool:
        return self.expected <= GOAL_PER_IMAGE * self.images

    def message(self) -> str:
        """One line for a person: the false pairs to expect here."""
        among = f"among these {self.images:,} images"
        if self.point.fpr == 0:
            return (f"at this threshold no different pair was measured within it; at most "
                    f"{_count(self.expected_upper)} false pairs are expected {among} (estimated on {self.measured_on})")
        amount = (f"fewer than {_count(0)}" if self.expected < SMALLEST_SHOWN else
                  f"{'about' if self.exact else 'at most about'} {_count(self.expected)}")
        where = "" if self.exact else f" at threshold {self.point.threshold:.4f}, the nearest measured above"
        return (f"at this threshold {amount} false pairs are expected {among} (at most "
                f"{_count(self.expected_upper)}; a false-pair rate of {self.point.fpr:.2g} per pair{where}, "
                f"estimated on {self.measured_on})")

    def warning(self) -> str | None:
        """One line when the goal fails here: too many images for this threshold, and what would keep it."""
        if self.holds:
            return None
        largest = self.largest
        keeps = (f"--threshold {self.safer.threshold:.4f} keeps it here (recall {self.safer.recall:.3f})"
                 if self.safer is not None else "no measured threshold keeps it here")
        return (f"{self.images:,} images are too many for this threshold to keep under one false pair per "
                f"{1 / GOAL_PER_IMAGE:,.0f} images (it does up to {largest:,}): review the groups before acting "
                f"on them; {keeps}")


SMALLEST_SHOWN = 1e-4
"""Fewer expected false pairs than this are shown as "fewer than" it: a count, not a rate, needs no exponent."""


def _count(pairs: float) -> str:
    """A number of pairs as a person reads it: two significant digits, no exponent (`SMALLEST_SHOWN` at the
    least)."""
    if pairs < SMALLEST_SHOWN:
        return f"{SMALLEST_SHOWN:f}".rstrip("0")
    return f"{pairs:,.0f}" if pairs >= 100 else f"{float(f'{pairs:.2g}'):f}".rstrip("0").rstrip(".")


def collection_false_pairs(points: Sequence[FalsePairRate], threshold: float, images: int,
                           measured_on: str) -> CollectionFalsePairs | None:
    """The false pairs `threshold` means among `images` distinct images, by the curve `points`; None when no
    point speaks for it (all lie below it) or there are under two images."""
    found = rate_at(points, threshold) if images >= 2 else None
    if found is None:
        return None
    point, exact = found
    goal = GOAL_PER_IMAGE * images
    keeping = [p for p in points if expected_false_pairs(p.fpr, images) <= goal and p.threshold < point.threshold]
    return CollectionFalsePairs(images, threshold, point, exact, measured_on, keeping[-1] if keeping else None)
