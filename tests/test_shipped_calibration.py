"""A model file that carries its own calibration: decisions on a fresh index need no calibrate step, say which
calibration they used, answer `--precision`, give way to the index's own calibration, and a file that lies about
its calibration is a one-line `ModelError`."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import assert_one_line_error, decision_photos, invoke
from retrieval import Collection, open_collection
from retrieval.decisions.calibration_store import save_calibration
from retrieval.errors import CalibrationError, InvalidArgumentError, ModelError
from retrieval.models.model import load_model
from retrieval.models.model_spec import PrecisionLevel, ShippedCalibration, read_model_header

MEASURED_ON = "synthetic test pairs"


@dataclass(frozen=True)
class Calibrated:
    """Photos indexed with a tiny model that ships a calibration: at precision 0.999 only the byte-identical copy of
    `a` is its duplicate, at precision 0.9 its half-size copy is one too."""

    root: Path
    model_file: Path
    resized: float
    """The distance of `a` and its half-size copy, nearer than any two other photos."""


def with_calibration(source: Path, target: Path, calibration: ShippedCalibration) -> Path:
    model = load_model(source)
    model.calibration = calibration
    model.save(target)
    return target


@pytest.fixture
def calibrated(tmp_path: Path, tiny_model_file: Path) -> Calibrated:
    photos = decision_photos(tmp_path / "photos")
    plain = Collection(None, load_model(tiny_model_file))
    resized = plain.verify(photos / "a.png", photos / "a-small.png", threshold=4.0).distance
    levels = (PrecisionLevel(0.9, resized + 1e-4, 0.95), PrecisionLevel(0.999, 1e-6, 0.5))
    model_file = with_calibration(tiny_model_file, tmp_path / "calibrated.safetensors",
                                  ShippedCalibration(levels, MEASURED_ON))
    result = invoke("index", "photos", "--model", str(model_file), "--workers", "0", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    return Calibrated(tmp_path, model_file, resized)


def group_names(groups: list[dict[str, object]]) -> list[list[str]]:
    return [sorted(Path(p).name for p in [g["keeper"]["path"], *(d["path"] for d in g["duplicates"])])  # type: ignore[index]
            for g in groups]


def test_the_calibration_travels_in_the_file_outside_the_content_hash(calibrated: Calibrated,
                                                                       tiny_model_file: Path) -> None:
    model, header = load_model(calibrated.model_file), read_model_header(calibrated.model_file)
    assert model.calibration == header.calibration
    assert header.calibration is not None and header.calibration.measured_on == MEASURED_ON
    assert [level.precision for level in header.calibration.levels] == [0.9, 0.999]
    assert model.content_hash == load_model(tiny_model_file).content_hash == header.content_hash
    assert load_model(tiny_model_file).calibration is None


def test_a_fresh_index_dedups_and_verifies_with_the_models_calibration(calibrated: Calibrated) -> None:
    result = invoke("dedup", "--json", cwd=calibrated.root)
    assert result.exit_code == 0, result.output
    groups = json.loads(result.stdout)
    assert group_names(groups) == [["a-copy.png", "a.png"]]
    assert (groups[0]["threshold_source"], groups[0]["precision"]) == ("model calibration", 0.999)
    assert result.stderr == (f"threshold 0.0000 (similarity 1.0000): the model's shipped calibration at precision "
                             f"0.999 (recall 0.500, measured on {MEASURED_ON})\n")

    copy = invoke("verify", "photos/a.png", "photos/a-copy.png", "--json", cwd=calibrated.root)
    assert copy.exit_code == 0, copy.output
    report = json.loads(copy.stdout)
    assert (report["threshold"], report["threshold_source"], report["precision"]) == (1e-6, "model calibration",
                                                                                       0.999)
    assert "the model's shipped calibration at precision 0.999" in copy.stderr
    resized = invoke("verify", "photos/a.png", "photos/a-small.png", cwd=calibrated.root)
    assert resized.exit_code == 1 and resized.stdout.startswith("different"), resized.output

    streamed = invoke("dedup", "--stdin", cwd=calibrated.root, input="photos/a-copy.png\nphotos/b.png\n")
    assert streamed.exit_code == 0, streamed.output
    assert [Path(json.loads(line)["duplicate_of"] or "-").name for line in streamed.stdout.splitlines()] == [
        "a.png", "-"]
    assert "the model's shipped calibration at precision 0.999" in streamed.stderr


def test_precision_chooses_the_level(calibrated: Calibrated) -> None:
    result = invoke("dedup", "--precision", "0.9", "--json", cwd=calibrated.root)
    assert result.exit_code == 0, result.output
    groups = json.loads(result.stdout)
    assert group_names(groups) == [["a-copy.png", "a-small.png", "a.png"]]
    assert groups[0]["precision"] == 0.9
    level = calibrated.resized + 1e-4
    assert f"threshold {level:.4f} (similarity {1 - level / 2:.4f}): the model's shipped calibration at " \
           f"precision 0.9 (recall 0.950" in result.stderr
    resized = invoke("verify", "photos/a.png", "photos/a-small.png", "--precision", "0.9", cwd=calibrated.root)
    assert resized.exit_code == 0 and resized.stdout.startswith("same"), resized.output


def test_a_precision_that_was_not_measured_is_a_one_line_error(calibrated: Calibrated) -> None:
    for command in (["dedup"], ["verify", "photos/a.png", "photos/b.png"], ["dedup", "--stdin"]):
        assert_one_line_error(invoke(*command, "--precision", "0.5", cwd=calibrated.root, input=""),
                              "the model's shipped calibration has no threshold at precision 0.5; it measured "
                              "0.9, 0.999")
    assert_one_line_error(invoke("dedup", "--precision", "0.9", "--threshold", "0.1", cwd=calibrated.root),
                          "give one of --threshold, --similarity and --precision")


def test_an_index_calibration_overrides_the_shipped_one(calibrated: Calibrated) -> None:
    photos = open_collection(calibrated.root / ".simsearch")
    save_calibration(photos.index, photos.model, "accuracy", calibrated.resized + 1e-4,
                     {"levels": [{"precision": 0.99, "threshold": 2e-6, "recall": 0.4}]})
    result = invoke("dedup", "--json", cwd=calibrated.root)
    assert result.exit_code == 0, result.output
    groups = json.loads(result.stdout)
    assert group_names(groups) == [["a-copy.png", "a-small.png", "a.png"]]
    assert (groups[0]["threshold_source"], groups[0]["precision"]) == ("index calibration", None)
    assert "the index's calibration of this model (accuracy, stored " in result.stderr
    at_level = invoke("verify", "photos/a.png", "photos/a-copy.png", "--precision", "0.99", "--json",
                      cwd=calibrated.root)
    assert at_level.exit_code == 0, at_level.output
    assert json.loads(at_level.stdout)["threshold"] == 2e-6
    assert "the index's calibration at precision 0.99 (recall 0.400" in at_level.stderr
    assert_one_line_error(invoke("dedup", "--precision", "0.9", cwd=calibrated.root),
                          "the index's calibration of this model has no threshold at precision 0.9; it measured 0.99")


def test_the_python_api_decides_the_same(calibrated: Calibrated) -> None:
    photos = open_collection(calibrated.root / ".simsearch")
    choice = photos.threshold_choice()
    assert (choice.threshold, choice.source, choice.precision, choice.recall) == (1e-6, "model calibration", 0.999,
                                                                                 0.5)
    assert choice.description.endswith(f"measured on {MEASURED_ON})")
    a, small = calibrated.root / "photos" / "a.png", calibrated.root / "photos" / "a-small.png"
    assert not photos.verify(a, small).same
    verdict = photos.verify(a, small, precision=0.9)
    assert verdict.same and verdict.choice.precision == 0.9
    assert len(photos.dedup()[0].others) == 1 and len(photos.dedup(precision=0.9)[0].others) == 2
    (strict,), (loose,) = (photos.classify({"a": [a]}, [small], precision=p) for p in (0.999, 0.9))
    assert (strict.label, loose.label) == (None, "a")
    with pytest.raises(CalibrationError, match="it measured 0.9, 0.999"):
        photos.threshold_choice(precision=0.5)
    with pytest.raises(InvalidArgumentError, match="not both"):
        photos.dedup(threshold=0.1, precision=0.9)
    with pytest.raises(TypeError, match="precision must be a number"):
        photos.threshold_choice(precision="0.9")  # type: ignore[arg-type]


Edit = Callable[[dict[str, object]], object]


def edited(change: Edit) -> Edit:
    """`change` applied to the calibration's JSON in place, which is then the lie."""
    def edit(calibration: dict[str, object]) -> dict[str, object]:
        change(calibration)
        return calibration

    return edit


def level_edit(**changes: object) -> Edit:
    return edited(lambda c: c["levels"][0].update(changes))  # type: ignore[index]


CALIBRATION_LIES: dict[str, tuple[Edit, str]] = {
    "threshold beyond 4": (level_edit(threshold=4.5), "threshold must be a number in [0, 4]"),
    "negative threshold": (level_edit(threshold=-0.1), "threshold must be a number in [0, 4]"),
    "threshold NaN": (level_edit(threshold=math.nan), "threshold must be a number in [0, 4]"),
    "threshold as text": (level_edit(threshold="0.3"), "threshold must be a number in [0, 4]"),
    "precision 0": (level_edit(precision=0), "precision must be a number in (0, 1]"),
    "precision above 1": (level_edit(precision=1.5), "precision must be a number in (0, 1]"),
    "precision true": (level_edit(precision=True), "precision must be a number in (0, 1]"),
    "recall below 0": (level_edit(recall=-0.1), "recall must be a number in [0, 1]"),
    "a level without recall": (edited(lambda c: c["levels"][0].pop("recall")),  # type: ignore[index]
                               "each level must be a JSON object of precision, recall, threshold"),
    "no levels": (lambda c: {**c, "levels": []}, "levels must be a tuple of 1 to 32 precision levels"),
    "levels not a list": (lambda c: {**c, "levels": {"0.9": 0.3}}, "levels must be a list"),
    "precisions descending": (lambda c: {**c, "levels": c["levels"][::-1]},  # type: ignore[index]
                              "the levels must have ascending precisions"),
    "a larger threshold at a higher precision": (
        lambda c: {**c, "levels": [{"precision": 0.9, "threshold": 0.2, "recall": 0.5},
                                   {"precision": 0.99, "threshold": 0.3, "recall": 0.5}]},
        "precision 0.99 cannot have a larger threshold or recall than precision 0.9"),
    "empty measured_on": (lambda c: {**c, "measured_on": ""}, "measured_on must be a string of 1 to 256"),
    "an unknown field": (lambda c: {**c, "split": "val"}, "must be a JSON object of levels, measured_on"),
    "not an object": (lambda c: [c], "must be a JSON object of levels, measured_on"),
    "not JSON": (lambda c: "{levels", "not JSON"),
}


@pytest.mark.parametrize("lie", list(CALIBRATION_LIES))
def test_a_calibration_that_lies_is_a_one_line_model_error(lie: str, tmp_path: Path, tiny_model_file: Path) -> None:
    good = with_calibration(tiny_model_file, tmp_path / "good.safetensors", ShippedCalibration(
        (PrecisionLevel(0.9, 0.3, 0.8), PrecisionLevel(0.99, 0.1, 0.4)), MEASURED_ON))
    with safe_open(str(good), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    edit, text = CALIBRATION_LIES[lie]
    lied = edit(json.loads(metadata["calibration"]))
    path = tmp_path / "lying.safetensors"
    save_file(tensors, str(path), metadata={**metadata, "calibration": lied if isinstance(lied, str)
                                            else json.dumps(lied)})
    for load in (load_model, read_model_header):
        with pytest.raises(ModelError) as caught:
            load(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: bad calibration: ") and text in message and "\n" not in message, message
    assert_one_line_error(invoke("verify", "a.png", "b.png", "--model", str(path), cwd=tmp_path), "bad calibration")
