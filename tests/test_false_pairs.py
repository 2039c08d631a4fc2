"""False pairs: the per-pair rate and its interval, the tail model, what a rate means among N images, the curve a
model file and an index calibration carry, the shipped default chosen by it, and the line dedup prints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import decision_photos, invoke
from retrieval import Collection, open_collection
from retrieval.decisions.calibration import CalibrationResult, calibrate, level_at
from retrieval.decisions.calibration_store import save_calibration
from retrieval.decisions.false_pairs import (MIN_COUNTED, clopper_pearson, collection_false_pairs, curve_thresholds,
                                             estimate_rate, expected_false_pairs, false_pair_curve, fit_tail,
                                             largest_collection, measured_rate, rate_at)
from retrieval.errors import CalibrationError, ModelError
from retrieval.models.model import load_default_model, load_model
from retrieval.models.model_spec import (DEFAULT_MODEL_FILE, FalsePairCurve, FalsePairRate, PrecisionLevel,
                                         ShippedCalibration, read_model_header)

LEVELS = (PrecisionLevel(0.9, 0.5, 0.9), PrecisionLevel(0.999, 0.2, 0.5))


def test_clopper_pearson_matches_the_exact_binomial_interval() -> None:
    low, high = clopper_pearson(5, 10)
    assert (round(low, 4), round(high, 4)) == (0.1871, 0.8129)
    low, high = clopper_pearson(0, 1000)
    assert low == 0 and math.isclose(high, 1 - 0.025 ** (1 / 1000), rel_tol=1e-9)  # about 3.7 / M
    assert clopper_pearson(7, 7)[1] == 1.0
    with pytest.raises(CalibrationError):
        clopper_pearson(3, 2)


def test_a_measured_rate_counts_the_pairs_at_most_the_threshold_apart() -> None:
    distances = np.array([0.1, 0.2, 0.2, 0.5, 1.0])
    rate = measured_rate(distances, 0.2)
    assert (rate.accepted, rate.pairs, rate.rate) == (3, 5, 0.6)
    assert rate.low < 0.6 < rate.high
    assert measured_rate(distances, 0.2, pairs=1000).rate == 0.003


def test_expected_false_pairs_grow_with_the_square_of_the_collection() -> None:
    assert math.isclose(expected_false_pairs(1e-8, 12_000), 1e-8 * 12_000 * 11_999 / 2)
    assert expected_false_pairs(0.5, 1) == 0
    assert largest_collection(2e-7) == 1001  # 2e-7 * 1000 / 2 = 1e-4 per image
    assert largest_collection(2e-4) == 2
    assert largest_collection(0.0) is None


def exponential_tail(pairs: int, scale: float, seed: int = 0) -> np.ndarray:
    """Distances whose share within t is exactly exp(-(2 - t) / scale) below 2."""
    return np.sort(2.0 - np.random.default_rng(seed).exponential(scale, pairs))


def test_the_tail_model_extrapolates_an_exponential_tail() -> None:
    distances = exponential_tail(200_000, 0.1)
    tail = fit_tail(distances, 100)
    assert tail.anchor == distances[99] and math.isclose(tail.scale, 0.1, rel_tol=0.25)
    deep = 2.0 - 0.1 * math.log(1e7)  # a true rate of 1e-7, 200 times below anything counted
    assert 1e-7 / 3 < tail.rate(deep) < 3e-7
    assert tail.rate(deep) < tail.upper(deep)
    assert tail.rate(tail.anchor + 1) == 100 / 200_000
    with pytest.raises(CalibrationError):
        fit_tail(np.full(50, 1.0), 20)


def test_an_estimate_counts_where_it_can_and_models_below() -> None:
    distances = exponential_tail(200_000, 0.1)
    tail = fit_tail(distances, 100)
    counted = estimate_rate(distances, float(distances[MIN_COUNTED - 1]), tail)
    assert counted.method == "measured" and counted.fpr == MIN_COUNTED / 200_000
    modelled = estimate_rate(distances, float(distances[0]) - 0.1, tail)
    assert modelled.method == "tail model" and modelled.measured.accepted == 0
    assert modelled.fpr == tail.rate(float(distances[0]) - 0.1) > 0
    assert modelled.fpr_upper >= max(modelled.measured.high, modelled.fpr)


def test_a_curve_never_falls_as_the_threshold_grows() -> None:
    different = exponential_tail(50_000, 0.1)
    same = np.linspace(0.0, 1.0, 101)
    points = false_pair_curve(different, same, curve_thresholds(0.777), fit_tail(different, 100))
    assert [p.threshold for p in points] == sorted({*(round(0.05 * k, 10) for k in range(1, 41)), 0.777})
    for lower, higher in zip(points, points[1:]):
        assert higher.fpr >= lower.fpr and higher.fpr_upper >= lower.fpr_upper and higher.recall >= lower.recall
    at = next(p for p in points if p.threshold == 0.777)
    assert at.recall == 78 / 101  # same distances 0.00, 0.01, ..., 0.77
    with pytest.raises(CalibrationError):
        false_pair_curve(different, np.array([]), [0.5])


POINTS = (FalsePairRate(0.4, 1e-9, 3e-9, 0.3), FalsePairRate(0.6, 1e-8, 4e-8, 0.5),
          FalsePairRate(0.8, 1e-6, 2e-6, 0.7))


def test_the_point_of_a_curve_that_speaks_for_a_threshold() -> None:
    assert rate_at(POINTS, 0.6) == (POINTS[1], True)
    assert rate_at(POINTS, 0.5) == (POINTS[1], False)  # bounded by the next point up
    assert rate_at(POINTS, 0.9) is None


def test_what_a_rate_means_in_a_collection() -> None:
    found = collection_false_pairs(POINTS, 0.6, 12_000, "test pairs")
    assert found is not None and found.exact and math.isclose(found.expected, 1e-8 * 12_000 * 11_999 / 2)
    assert found.message() == ("at this threshold about 0.72 false pairs are expected among these 12,000 images "
                               "(at most 2.9; a false-pair rate of 1e-08 per pair, estimated on test pairs)")
    assert found.holds and found.warning() is None and found.largest == 20_001

    large = collection_false_pairs(POINTS, 0.6, 100_000, "test pairs")
    assert large is not None and not large.holds and large.safer == POINTS[0]
    assert large.warning() == ("100,000 images are too many for this threshold to keep under one false pair per "
                               "10,000 images (it does up to 20,001): review the groups before acting on them; "
                               "--threshold 0.4000 keeps it here (recall 0.300)")
    hopeless = collection_false_pairs(POINTS, 0.4, 10_000_000, "test pairs")
    assert hopeless is not None and hopeless.warning() is not None
    assert hopeless.warning().endswith("no measured threshold keeps it here")  # type: ignore[union-attr]

    between = collection_false_pairs(POINTS, 0.7, 1_000, "test pairs")
    assert between is not None and not between.exact
    assert between.message() == ("at this threshold at most about 0.5 false pairs are expected among these 1,000 "
                                 "images (at most 1; a false-pair rate of 1e-06 per pair at threshold 0.8000, the "
                                 "nearest measured above, estimated on test pairs)")
    tiny = collection_false_pairs(POINTS, 0.4, 100, "test pairs")
    assert tiny is not None and tiny.message().startswith(
        "at this threshold fewer than 0.0001 false pairs are expected among these 100 images (at most 0.0001;")
    none_seen = collection_false_pairs((FalsePairRate(0.5, 0.0, 3e-4, 0.6),), 0.5, 100, "calibration pairs")
    assert none_seen is not None and none_seen.message().startswith(
        "at this threshold no different pair was measured within it; at most 1.5 false pairs are expected")
    assert collection_false_pairs(POINTS, 0.9, 1_000, "x") is None
    assert collection_false_pairs(POINTS, 0.6, 1, "x") is None


def curve(default: float = 0.6) -> FalsePairCurve:
    return FalsePairCurve(POINTS, "test pairs", default)


@pytest.mark.parametrize("points, default, text", [
    (POINTS, 0.5, "default_threshold must be the threshold of one of the points"),
    (POINTS[::-1], 0.6, "the points must have ascending thresholds"),
    ((FalsePairRate(0.4, 1e-6, 1e-7, 0.3),), 0.4, "is above its upper bound"),
    ((FalsePairRate(0.4, 1e-6, 2e-6, 0.3), FalsePairRate(0.6, 1e-7, 2e-6, 0.5)), 0.4,
     "cannot have a smaller fpr, fpr_upper or recall"),
    ((FalsePairRate(4.5, 1e-6, 2e-6, 0.3),), 4.5, "threshold must be a number in [0, 4]"),
    ((FalsePairRate(0.4, math.nan, 2e-6, 0.3),), 0.4, "fpr must be a number in [0, 1]"),
    ((), 0.4, "points must be a tuple of 1 to 128"),
])
def test_a_curve_that_lies_is_a_model_error(points: tuple[FalsePairRate, ...], default: float, text: str) -> None:
    with pytest.raises(ModelError, match=text.replace("[", r"\[").replace("]", r"\]")):
        FalsePairCurve(points, "test pairs", default)


def test_a_calibration_carries_its_curve_in_its_json() -> None:
    calibration = ShippedCalibration(LEVELS, "synthetic pairs", curve())
    again = ShippedCalibration.from_json(calibration.to_json())
    assert again == calibration and again.false_pairs is not None and again.false_pairs.default == POINTS[1]
    levels_only = ShippedCalibration(LEVELS, "synthetic pairs")
    assert "false_pairs" not in json.loads(levels_only.to_json())
    assert ShippedCalibration.from_json(levels_only.to_json()) == levels_only
    data = json.loads(calibration.to_json())
    data["false_pairs"]["points"][0]["extra"] = 1
    with pytest.raises(ModelError, match="each point must be a JSON object of fpr, fpr_upper, recall, threshold"):
        ShippedCalibration.from_json(json.dumps(data))
    data = json.loads(calibration.to_json())
    del data["false_pairs"]["default_threshold"]
    with pytest.raises(ModelError, match="false_pairs must be a JSON object of default_threshold, measured_on, points"):
        ShippedCalibration.from_json(json.dumps(data))


def test_calibrate_measures_the_curve_at_its_threshold_and_levels() -> None:
    rng = np.random.default_rng(0)
    same, different = rng.uniform(0.0, 0.6, 400), rng.uniform(0.4, 2.0, 4000)
    result = calibrate(same, different, bootstrap=0)
    at = {point.threshold: point for point in result.false_pairs}
    assert at[result.threshold].fpr == result.fpr and at[result.threshold].recall == result.tpr
    for level in result.levels:
        assert level.threshold in at
    assert all(point.fpr_upper > point.fpr for point in result.false_pairs if point.fpr < 1)
    assert CalibrationResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_the_shipped_model_decides_at_its_false_pair_default() -> None:
    """The shipped file loads with its weights' content hash unchanged, carries the curve that
    benchmarks/hard_negatives.py recorded, and decides at its default when nothing is asked."""
    record = json.loads(DEFAULT_MODEL_FILE.with_suffix(".json").read_text())
    model = load_default_model()
    header = read_model_header(DEFAULT_MODEL_FILE)
    assert model.content_hash == header.content_hash == record["content_hash"]
    shipped = model.calibration
    assert shipped is not None and shipped.false_pairs is not None
    recorded = record["calibration"]["false_pairs"]
    assert shipped.false_pairs.default_threshold == recorded["default_threshold"]
    assert [vars(p) for p in shipped.false_pairs.points] == recorded["points"]
    choice = Collection(None, model).threshold_choice()
    default = shipped.false_pairs.default
    assert (choice.threshold, choice.source, choice.precision, choice.recall) == (
        default.threshold, "model calibration", None, default.recall)
    strict = Collection(None, model).threshold_choice(precision=0.999)
    assert strict.threshold == level_at(shipped.levels, 0.999, "").threshold > default.threshold
    old = rate_at(shipped.false_pairs.points, strict.threshold)
    assert old is not None and old[1]
    # by the test split's estimates: under one false pair per 10,000 images up to some hundreds of images at the
    # default, a few dozen at the precision-0.999 level
    assert largest_collection(default.fpr) >= 200 and largest_collection(old[0].fpr) < 50  # type: ignore[operator]


def test_dedup_says_how_many_false_pairs_to_expect_here(tmp_path: Path, tiny_model_file: Path) -> None:
    decision_photos(tmp_path / "photos")
    model = load_model(tiny_model_file)
    model.calibration = ShippedCalibration(LEVELS, "synthetic pairs", FalsePairCurve(
        (FalsePairRate(1e-6, 1e-9, 2e-9, 0.5), FalsePairRate(0.5, 0.01, 0.02, 0.9)), "synthetic different pairs",
        1e-6))
    model.save(tmp_path / "curved.safetensors")
    indexed = invoke("index", "photos", "--model", str(tmp_path / "curved.safetensors"), "--workers", "0",
                     cwd=tmp_path)
    assert indexed.exit_code == 0, indexed.output

    result = invoke("dedup", "--json", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    groups = json.loads(result.stdout)
    assert (groups[0]["threshold"], groups[0]["threshold_source"], groups[0]["precision"]) == (
        1e-6, "model calibration", None)
    lines = result.stderr.splitlines()
    assert lines[0].startswith("threshold 0.0000 (similarity 1.0000): the model's shipped default (recall 0.500")
    assert lines[1] == ("at this threshold fewer than 0.0001 false pairs are expected among these 6 images (at most "
                        "0.0001; a false-pair rate of 1e-09 per pair, estimated on synthetic different pairs)")
    assert "warning" not in result.stderr

    loose = invoke("dedup", "--threshold", "0.4", cwd=tmp_path)
    assert loose.exit_code == 0, loose.output
    assert ("at this threshold at most about 0.15 false pairs are expected among these 6 images (at most 0.3; a "
            "false-pair rate of 0.01 per pair at threshold 0.5000, the nearest measured above") in \
        loose.stderr.replace("\n", " ")
    assert ("warning: 6 images are too many for this threshold to keep under one false pair per 10,000 images "
            "(it does up to 1): review the groups before acting on them; --threshold 0.0000 keeps it here "
            "(recall 0.500)") in loose.stderr.replace("\n", " ")
    assert "false pairs" not in invoke("dedup", "--threshold", "0.6", cwd=tmp_path).stderr  # beyond the curve

    photos = open_collection(tmp_path / ".simsearch")
    save_calibration(photos.index, photos.model, "accuracy", 0.3, {"false_pairs": [
        {"threshold": 0.3, "fpr": 0.0, "fpr_upper": 0.004, "recall": 0.7}]})
    own = invoke("dedup", cwd=tmp_path)
    assert own.exit_code == 0, own.output
    assert ("at this threshold no different pair was measured within it; at most 0.06 false pairs are expected "
            "among these 6 images (estimated on the different pairs of the index's calibration)") in \
        own.stderr.replace("\n", " ")


def test_a_model_calibrated_by_precision_alone_prints_no_false_pairs(tmp_path: Path, tiny_model_file: Path) -> None:
    decision_photos(tmp_path / "photos")
    model = load_model(tiny_model_file)
    model.calibration = ShippedCalibration(LEVELS, "synthetic pairs")
    model.save(tmp_path / "levels.safetensors")
    assert invoke("index", "photos", "--model", str(tmp_path / "levels.safetensors"), "--workers", "0",
                  cwd=tmp_path).exit_code == 0
    result = invoke("dedup", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert "false pairs" not in result.stderr and "at precision 0.999" in result.stderr


def test_a_given_threshold_needs_no_readable_model_file(tmp_path: Path, tiny_model_file: Path) -> None:
    """The curve comes from the model file's header where it can be read; a given threshold decides on the
    stored vectors without it, as before there was a curve."""
    decision_photos(tmp_path / "photos")
    assert invoke("index", "photos", "--model", str(tiny_model_file), "--workers", "0", cwd=tmp_path).exit_code == 0
    for model_file in (tmp_path / ".simsearch" / "models").iterdir():
        model_file.write_bytes(b"damaged")
    result = invoke("dedup", "--threshold", "0.001", "--json", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 1


def test_calibrate_stores_its_curve_and_says_what_its_rate_means(labelled: Path, tiny_model_file: Path) -> None:
    result = invoke("calibrate", "data", "--model", str(tiny_model_file), "--bootstrap", "0", "--workers", "0",
                    cwd=labelled)
    assert result.exit_code == 0, result.output
    assert ("false pairs expected at this threshold: 0 among 1,000 images, 0 among 12,000 images, 0 among 100,000 "
            "images (a rate of 0 of these 27 different pairs, at most 0.13)") in result.stdout.replace("\n", " ")
    stored = open_collection(labelled / ".simsearch", load_model(tiny_model_file)).calibration()
    assert stored is not None
    threshold = stored.threshold
    [point] = [p for p in stored.metrics["false_pairs"] if p["threshold"] == threshold]  # type: ignore[union-attr]
    assert (point["fpr"], round(point["fpr_upper"], 4), point["recall"]) == (0.0, 0.1277, 1.0)
