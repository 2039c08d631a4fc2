"""Threshold choice, bootstrap intervals, pair sampling, the plot, and `simsearch calibrate`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, invoke, photo
from retrieval.decisions.calibration import (MARGIN, PRECISION_LEVELS, CalibrationResult, Interval, _bootstrap,
                                             calibrate, choose_threshold, decide, precision_levels,
                                             sample_calibration_pairs)
from retrieval.decisions.calibration_plot import write_calibration_plot
from retrieval.errors import CalibrationError
from retrieval.evaluation.metrics import roc_auc
from retrieval.models.model_spec import PrecisionLevel, ShippedCalibration


def gaussian_pairs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0.5, 0.1, n), rng.normal(0.9, 0.1, n)


def test_separable_distances_get_a_threshold_between_them() -> None:
    result = calibrate(np.array([0.1, 0.2, 0.3]), np.array([0.8, 0.9, 1.0]), bootstrap=0)
    assert 0.3 < result.threshold < 0.8
    assert (result.accuracy, result.roc_auc, result.tpr, result.fpr) == (1.0, 1.0, 1.0, 0.0)


def test_best_accuracy_threshold_is_where_equal_gaussians_cross() -> None:
    same, different = gaussian_pairs(20_000)
    assert choose_threshold(same, different) == pytest.approx(0.7, abs=0.02)


def test_target_fpr_is_the_largest_threshold_that_keeps_the_rate() -> None:
    same, different = gaussian_pairs(5_000, seed=1)
    threshold = choose_threshold(same, different, "target-fpr", target_fpr=0.01)
    assert np.mean(different <= threshold) <= 0.01
    next_different = np.min(different[different > threshold])
    assert np.mean(different <= next_different) > 0.01



def test_tied_accuracy_puts_the_threshold_halfway_between_distances() -> None:
    assert choose_threshold(np.array([0.1, 0.3]), np.array([0.5, 0.7])) == pytest.approx(0.4)
    tied = np.array([0.1, 0.5, 0.7]), np.array([0.5, 0.7, 0.9])  # 0.3, 0.6 and 0.8 each get 4 of 6 right
    assert choose_threshold(*tied) == pytest.approx(0.6)


def test_target_fpr_below_the_nearest_different_pair_accepts_nothing_different() -> None:
    same, different = np.array([0.2, 0.5, 0.6]), np.array([0.4, 0.9, 1.0])
    threshold = choose_threshold(same, different, "target-fpr", target_fpr=0.2)
    assert 0.2 < threshold < 0.4
    assert decide(different, threshold).sum() == 0 and decide(0.2, threshold) is True

def test_equal_error_rate_balances_the_two_errors() -> None:
    same, different = gaussian_pairs(20_000, seed=2)
    threshold = choose_threshold(same, different, "eer")
    assert abs(np.mean(different <= threshold) - np.mean(same > threshold)) < 0.005


def width(interval: Interval | None) -> float:
    assert interval is not None
    return interval.high - interval.low


def test_bootstrap_intervals_hold_the_estimate_shrink_with_data_and_are_seeded() -> None:
    small = calibrate(*gaussian_pairs(200), bootstrap=300, seed=3)
    large = calibrate(*gaussian_pairs(5_000), bootstrap=300, seed=3)
    for result in (small, large):
        assert result.threshold_interval is not None and result.accuracy_interval is not None
        assert result.threshold_interval.low <= result.threshold <= result.threshold_interval.high
        assert result.accuracy_interval.low <= result.accuracy <= result.accuracy_interval.high
    assert width(large.threshold_interval) < width(small.threshold_interval)
    assert calibrate(*gaussian_pairs(200), bootstrap=300, seed=3) == small



def test_each_bootstrap_resample_gets_the_threshold_and_auc_of_its_own_pairs() -> None:
    rng = np.random.default_rng(5)
    same, different = np.round(rng.normal(0.5, 0.2, 50), 2), np.round(rng.normal(0.8, 0.2, 70), 2)
    for criterion, target in (("accuracy", None), ("eer", None), ("target-fpr", 0.1)):
        draws = _bootstrap(same, different, criterion, target, 20, np.random.default_rng(6))
        replay = np.random.default_rng(6)
        s = same[replay.integers(0, len(same), (20, len(same)))]
        d = different[replay.integers(0, len(different), (20, len(different)))]
        assert draws["threshold"].tolist() == [choose_threshold(a, b, criterion, target) for a, b in zip(s, d)]
        assert draws["roc_auc"] == pytest.approx([roc_auc(a, b) for a, b in zip(s, d)], abs=1e-12)
        assert draws["fpr"].tolist() == [np.mean(b <= t) for b, t in zip(d, draws["threshold"])]

def test_result_round_trips_through_json() -> None:
    result = calibrate(*gaussian_pairs(300), bootstrap=50)
    assert result.levels == precision_levels(*gaussian_pairs(300))
    assert CalibrationResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_precision_levels_take_the_largest_threshold_that_keeps_the_precision() -> None:
    """In distance order: same 0.1, 0.2, 0.3, different 0.4, same 0.5, different 0.6, 0.7."""
    same, different = np.array([0.1, 0.2, 0.3, 0.5]), np.array([0.4, 0.6, 0.7])
    levels = precision_levels(same, different, [1.0, 0.8, 0.9, 0.5])
    assert [level.precision for level in levels] == [0.5, 0.8, 0.9, 1.0]
    assert [level.threshold for level in levels] == pytest.approx([0.7 + MARGIN, 0.55, 0.35, 0.35])
    assert [level.recall for level in levels] == [1.0, 1.0, 0.75, 0.75]


def test_precision_levels_hold_on_many_pairs_and_leave_out_a_level_never_reached() -> None:
    same, different = gaussian_pairs(5_000, seed=4)
    levels = precision_levels(same, different)
    assert [level.precision for level in levels] == list(PRECISION_LEVELS)
    for level in levels:
        within_same, within_different = (same <= level.threshold).sum(), (different <= level.threshold).sum()
        assert within_same / (within_same + within_different) >= level.precision
        assert level.recall == within_same / len(same)
        farther = np.concatenate([same, different])
        nearest_beyond = farther[farther > level.threshold].min()
        more_same = (same <= nearest_beyond).sum()
        assert more_same / (more_same + (different <= nearest_beyond).sum()) < level.precision
    assert precision_levels(np.array([0.5, 0.6]), np.array([0.1]), [0.6, 0.9]) == (
        PrecisionLevel(0.6, 0.6 + MARGIN, 1.0),)


def test_precision_levels_can_always_be_shipped_with_a_model() -> None:
    """Accepting every pair, even at the largest possible distance, is a threshold of at most 4."""
    levels = precision_levels(np.array([3.9, 4.0]), np.array([0.0]), [0.6])
    assert levels == (PrecisionLevel(0.6, 4.0, 1.0),)
    assert ShippedCalibration(levels, "two pairs").levels == levels


def test_calibration_errors() -> None:
    with pytest.raises(CalibrationError, match="no same pairs"):
        calibrate(np.array([]), np.array([1.0]))
    with pytest.raises(CalibrationError, match="no different pairs"):
        calibrate(np.array([0.1]), np.array([]))
    with pytest.raises(CalibrationError, match="between 0 and 1"):
        choose_threshold(np.array([0.1]), np.array([1.0]), "target-fpr", target_fpr=1.5)
    with pytest.raises(CalibrationError, match="between 0 and 1"):
        calibrate(np.array([0.1]), np.array([1.0]), "target-fpr")
    with pytest.raises(CalibrationError, match="unknown criterion"):
        choose_threshold(np.array([0.1]), np.array([1.0]), "f1")  # type: ignore[arg-type]
    with pytest.raises(CalibrationError, match="finite"):
        calibrate(np.array([0.1, np.nan]), np.array([1.0]))
    with pytest.raises(CalibrationError, match=r"precision level must be a number in \(0, 1\]"):
        precision_levels(np.array([0.1]), np.array([1.0]), [0.9, 0.0])


def test_pair_sample_has_every_positive_once_and_distinct_negatives() -> None:
    labels = np.repeat(np.arange(5), [2, 3, 4, 1, 5])
    first, second, same = sample_calibration_pairs(labels, seed=4)
    positives = {(a, b) for a, b in zip(first[same], second[same])}
    assert len(positives) == same.sum() == 1 + 3 + 6 + 10
    assert all(labels[a] == labels[b] and a < b for a, b in positives)
    negatives = list(zip(first[~same], second[~same]))
    assert len(set(negatives)) == len(negatives) == (15 * 15 - (4 + 9 + 16 + 1 + 25)) // 2
    assert all(labels[a] != labels[b] for a, b in negatives)
    again = sample_calibration_pairs(labels, negatives=10, seed=4)
    assert np.array_equal(again[0], sample_calibration_pairs(labels, negatives=10, seed=4)[0])
    with pytest.raises(CalibrationError, match="two classes"):
        sample_calibration_pairs(np.zeros(5, int))
    with pytest.raises(CalibrationError, match="at least two images"):
        sample_calibration_pairs(np.arange(5))


def test_pair_sample_of_many_images_is_distinct_and_sized_as_asked() -> None:
    labels = np.random.default_rng(7).integers(0, 2_000, 20_000)
    first, second, same = sample_calibration_pairs(labels, seed=8)
    assert same.sum() == sum(n * (n - 1) // 2 for n in np.bincount(labels)) == (~same).sum()
    assert len(np.unique(first * len(labels) + second)) == len(first)
    assert np.all(first < second) and np.array_equal(labels[first] == labels[second], same)
    few_same, _, few = sample_calibration_pairs(np.repeat([0, 1], [40, 30]), max_same=100, seed=8)
    assert (few.sum(), (~few).sum()) == (100, 1000)
    assert not np.array_equal(few_same, sample_calibration_pairs(np.repeat([0, 1], [40, 30]), max_same=100,
                                                                 seed=9)[0])


def test_plot_is_a_png(tmp_path: Path) -> None:
    same, different = gaussian_pairs(500)
    write_calibration_plot(same, different, calibrate(same, different, bootstrap=0), tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibrate_stores_a_threshold_that_verify_then_uses(labelled: Path, tiny_model_file: Path) -> None:
    result = invoke("calibrate", "data", "--model", str(tiny_model_file), "--bootstrap", "50", "--json",
                    "--workers", "0", cwd=labelled)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["same_pairs"] == 9 and report["different_pairs"] == 27
    assert report["roc_auc"] == 1.0 and report["accuracy"] == 1.0
    assert Path(report["plot"]).read_bytes()[:4] == b"\x89PNG"
    verified = invoke("verify", "data/red/0.png", "data/red/2.png", "--model", str(tiny_model_file), "--json",
                      cwd=labelled)
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.stdout)["threshold"] == report["threshold"]
    (strictest, *_), (level, *_) = [[lv for lv in report["levels"] if lv["precision"] == p] for p in (0.999, 0.9)]
    assert strictest["threshold"] <= level["threshold"]
    at_level = invoke("verify", "data/red/0.png", "data/red/2.png", "--model", str(tiny_model_file), "--precision",
                      "0.9", "--json", cwd=labelled)
    assert at_level.exit_code == 0 and level["recall"] == 1.0, at_level.output
    answer = json.loads(at_level.stdout)
    assert (answer["threshold"], answer["threshold_source"], answer["precision"]) == (
        level["threshold"], "index calibration", 0.9)
    elsewhere = invoke("verify", "data/red/0.png", "data/red/2.png", "--json", cwd=labelled)  # the default model
    assert elsewhere.exit_code in (0, 1), elsewhere.output
    assert json.loads(elsewhere.stdout)["threshold_source"] == "model calibration", \
        "the tiny model's calibration is never applied to another model"


def test_calibrate_from_a_pairs_csv(labelled: Path, tiny_model_file: Path) -> None:
    rows = [("data/red/0.png", "data/red/1.png", "1"), ("data/red/0.png", "data/blue/0.png", "0"),
            ("data/green/1.png", "data/green/2.png", "true"), ("data/green/1.png", "data/red/2.png", "false")]
    with (labelled / "pairs.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([("path_a", "path_b", "same"), *rows])
    result = invoke("calibrate", "pairs.csv", "--model", str(tiny_model_file), "--target-fpr", "0.5", "--json",
                    cwd=labelled)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["same_pairs"], report["different_pairs"], report["criterion"]) == (2, 2, "target-fpr")


def test_calibrate_bad_input_writes_nothing(labelled: Path, tiny_model_file: Path) -> None:
    (labelled / "bad-header.csv").write_text("a,b,c\nx,y,1\n")
    (labelled / "missing.csv").write_text("path_a,path_b,same\ndata/red/0.png,data/red/9.png,1\n")
    (labelled / "one" / "only").mkdir(parents=True)
    photo(0).save(labelled / "one" / "only" / "a.png")
    photo(1).save(labelled / "one" / "only" / "b.png")
    model = ["--model", str(tiny_model_file), "--workers", "0"]
    assert_one_line_error(invoke("calibrate", "bad-header.csv", *model, cwd=labelled), "header must be")
    assert_one_line_error(invoke("calibrate", "missing.csv", *model, cwd=labelled), "no such file: data/red/9.png")
    assert_one_line_error(invoke("calibrate", "one", *model, cwd=labelled), "at least two class")
    assert_one_line_error(invoke("calibrate", "data", "--criterion", "target-fpr", *model, cwd=labelled),
                          "needs --target-fpr")
    (labelled / "a-file").write_text("")
    assert_one_line_error(invoke("calibrate", "data", "--plot", "a-file/plot.png", *model, cwd=labelled),
                          "not a folder: a-file (to write a-file/plot.png)")
    assert not (labelled / ".simsearch").exists()
