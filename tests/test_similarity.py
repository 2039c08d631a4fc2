"""A threshold people read: the cosine similarity beside every distance, `--similarity` beside `--threshold` and
`--precision` (one conversion, `retrieval.vectors.unit_distance`), exact copies named `copy` in the dedup table, and
long paths in tables shortened in the middle, where the file name's end (`_crop`, `_q40`) stays."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cli.output import fit_path_columns, shortened_middle
from conftest import assert_one_line_error, invoke, photo
from retrieval.errors import ArgumentTypeError, InvalidArgumentError
from retrieval.vectors.unit_distance import cosine_similarity, distance_between, threshold_for_similarity

DEEP = "2019/summer holiday in the mountains/day three"


@pytest.fixture
def collection(tmp_path: Path, tiny_model_file: Path) -> Path:
    """a, b, c distinct; a with an exact copy and a half-size copy, and a copy deep in folders named as edits are."""
    photos = tmp_path / "photos"
    (photos / DEEP).mkdir(parents=True)
    for i, name in enumerate("abc"):
        photo(i, (128, 96)).save(photos / f"{name}.png")
    shutil.copy(photos / "a.png", photos / "a-copy.png")
    photo(0, (64, 48)).save(photos / "a-small.png")
    shutil.copy(photos / "b.png", photos / DEEP / "IMG_0001_crop_q40.png")
    for name, source in (("alpha", "a.png"), ("beta", "b.png")):
        (tmp_path / "support" / name).mkdir(parents=True)
        shutil.copy(photos / source, tmp_path / "support" / name / "1.png")
    result = invoke("index", "photos", "--model", str(tiny_model_file), "--workers", "0", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    return tmp_path


def test_cosine_and_distance_convert_in_one_place() -> None:
    rng = np.random.default_rng(0)
    a, b = (v / np.linalg.norm(v) for v in rng.standard_normal((2, 32)))
    assert cosine_similarity(distance_between(a, b)) == pytest.approx(float(a @ b), abs=1e-6)
    assert threshold_for_similarity(0.9) == 0.2, "exactly, not 0.19999999999999996"
    assert (threshold_for_similarity(1), threshold_for_similarity(0), threshold_for_similarity(-1)) == (0, 2, 4)
    for similarity in (0.4, 0.95, 0.999, 0.123456):
        assert cosine_similarity(threshold_for_similarity(similarity)) == pytest.approx(similarity, abs=1e-12)
    for bad in (1.5, -1.01, float("nan"), float("inf")):
        with pytest.raises(InvalidArgumentError):
            threshold_for_similarity(bad)
    with pytest.raises(ArgumentTypeError):
        threshold_for_similarity("0.9")


def test_similarity_is_the_same_decision_as_its_threshold(collection: Path) -> None:
    similarity, threshold = "0.975", "0.05"
    for command in (["dedup", "--json"], ["dedup", "--csv"], ["verify", "photos/a.png", "photos/b.png", "--json"],
                    ["classify", "--support", "support", "photos/a.png", "--json"]):
        by_similarity = invoke(*command, "--similarity", similarity, cwd=collection)
        by_threshold = invoke(*command, "--threshold", threshold, cwd=collection)
        assert by_similarity.exit_code == by_threshold.exit_code in (0, 1), by_similarity.output
        assert by_similarity.stdout == by_threshold.stdout, command
    streamed = [invoke("dedup", "--stdin", option, value, cwd=collection, input="photos/a-copy.png\n").stdout
                for option, value in (("--similarity", similarity), ("--threshold", threshold))]
    assert streamed[0] == streamed[1] and json.loads(streamed[0])["similarity"] == 1.0


def test_threshold_similarity_and_precision_exclude_each_other(collection: Path) -> None:
    for command in (["dedup"], ["verify", "photos/a.png", "photos/b.png"], ["classify", "--support", "support",
                                                                             "photos/a.png"]):
        for pair in (["--threshold", "0.1", "--similarity", "0.9"], ["--similarity", "0.9", "--precision", "0.99"]):
            assert_one_line_error(invoke(*command, *pair, cwd=collection),
                                  "give one of --threshold, --similarity and --precision")
    result = invoke("dedup", "--similarity", "1.5", cwd=collection)
    assert result.exit_code == 2 and "less than or equal to 1" in result.output


def test_every_decision_shows_the_cosine_beside_the_distance(collection: Path) -> None:
    text = invoke("verify", "photos/a.png", "photos/b.png", "--similarity", "0.9", cwd=collection)
    assert text.exit_code in (0, 1), text.output
    report = json.loads(invoke("verify", "photos/a.png", "photos/b.png", "--similarity", "0.9", "--json",
                               cwd=collection).stdout)
    assert report["similarity"] == round(1 - report["distance"] / 2, 6)
    assert (report["threshold"], report["threshold_similarity"]) == (0.2, 0.9)
    assert f"distance {report['distance']:.4f} (similarity {report['similarity']:.4f}), threshold 0.2000 " \
           "(similarity 0.9000)" in text.stdout

    [*groups] = json.loads(invoke("dedup", "--threshold", "0.05", "--json", cwd=collection).stdout)
    for group in groups:
        assert group["threshold_similarity"] == 0.975
        for duplicate in group["duplicates"]:
            assert duplicate["similarity"] == round(1 - duplicate["distance"] / 2, 6)
    rows = list(csv.DictReader(io.StringIO(invoke("dedup", "--threshold", "0.05", "--csv", cwd=collection).stdout)))
    assert list(rows[0])[:5] == ["group", "role", "path", "distance", "similarity"]
    assert all(float(row["similarity"]) == round(1 - float(row["distance"]) / 2, 6) for row in rows)

    table = invoke("dedup", "--threshold", "0.05", cwd=collection).stdout
    assert "similarity" in table and "at threshold 0.0500 (similarity 0.9750)" in table
    classified = invoke("classify", "--support", "support", "photos/a.png", "--threshold", "0.05", cwd=collection)
    assert classified.exit_code == 0 and "similarity" in classified.stdout, classified.output
    [result] = json.loads(invoke("classify", "--support", "support", "photos/a.png", "--threshold", "0.05", "--json",
                                 cwd=collection).stdout)
    assert result["similarity"] == round(1 - result["distance"] / 2, 6) and result["threshold_similarity"] == 0.975


def test_the_table_marks_exact_copies_and_shortens_paths_in_the_middle(collection: Path) -> None:
    table = invoke("dedup", "--threshold", "0.05", cwd=collection, env={"COLUMNS": "80"}).stdout
    roles = {line.split("│")[6].strip(): line.split("│")[2].strip() for line in table.splitlines()
             if line.startswith("│") and "png" in line}
    assert roles["photos/a-copy.png"] == "copy" and roles["photos/a-small.png"] == "duplicate"
    assert roles["photos/a.png"] == roles["photos/b.png"] == "keep"
    [deep] = [path for path in roles if "IMG_0001" in path]
    assert deep.startswith("…/") and deep.endswith("/IMG_0001_crop_q40.png"), deep
    assert all(len(line) <= 80 for line in table.splitlines() if line.startswith(("│", "┃")))
    wide = invoke("dedup", "--threshold", "0.05", cwd=collection, env={"COLUMNS": "200"}).stdout
    assert f"photos/{DEEP}/IMG_0001_crop_q40.png" in wide, "shortened only where it does not fit"


def test_shortened_middle_keeps_the_end_of_the_name() -> None:
    path = "/home/user/Pictures/2019/holiday/IMG_0001_q40.jpg"
    assert shortened_middle(path, 80) == path
    assert shortened_middle(path, 30) == "…/holiday/IMG_0001_q40.jpg"
    assert shortened_middle(path, 20) == "…/IMG_0001_q40.jpg"
    name = "a_very_long_file_name_of_an_edit_crop_q40.jpg"
    assert shortened_middle(name, 20).endswith("crop_q40.jpg") and len(shortened_middle(name, 20)) == 20
    assert "…" in shortened_middle(name, 20)
    assert shortened_middle("日本語の写真/とても長い名前の写真_q40.jpg", 24).endswith("_q40.jpg")
    rows = fit_path_columns(["n", "path"], [["1", path], ["2", "x.jpg"]], [1], 40)
    assert rows == [["1", "…/2019/holiday/IMG_0001_q40.jpg"], ["2", "x.jpg"]]
