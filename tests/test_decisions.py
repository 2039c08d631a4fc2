"""verify, dedup (table, JSON, CSV, --print0, --stdin), the Python API and stored calibrations."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import assert_one_line_error, decision_photos, invoke, photo, save_tiny_model
from retrieval import open_collection
from retrieval.decisions.calibration_store import latest_calibration, save_calibration
from retrieval.errors import CalibrationError, ModelMismatchError
from retrieval.models.model import load_model

COPY_THRESHOLD = 1e-6
"""Below the distance of any two different test photos; identical files (one shared vector) are at 0."""


@pytest.fixture
def collection(tmp_path: Path, tiny_model_file: Path) -> Path:
    """Five distinct photos; `a` has a byte-identical copy and a half-size copy (more pixels win the keeper)."""
    decision_photos(tmp_path / "photos")
    result = invoke("index", "photos", "--model", str(tiny_model_file), "--workers", "0", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    return tmp_path


def distance(root: Path, first: str, second: str) -> float:
    verdict = open_collection(root / ".simsearch").verify(root / first, root / second, threshold=2.0)
    return verdict.distance


def test_verify_exit_code_says_same_or_different(collection: Path) -> None:
    small = distance(collection, "photos/a.png", "photos/a-small.png")
    other = distance(collection, "photos/a.png", "photos/b.png")
    assert small < other, "a resized copy must be nearer than another photo"
    threshold = str((small + other) / 2)
    same = invoke("verify", "photos/a.png", "photos/a-small.png", "--threshold", threshold, "--json", cwd=collection)
    assert same.exit_code == 0, same.output
    report = json.loads(same.stdout)
    assert report["same"] is True and report["margin"] > 0 and report["probability"] is None
    assert (report["threshold_source"], report["precision"]) == ("given", None) and same.stderr == ""
    different = invoke("verify", "photos/a.png", "photos/b.png", "--threshold", threshold, cwd=collection)
    assert different.exit_code == 1 and different.stdout.startswith("different")


def test_verify_needs_a_calibration_of_this_model_or_a_threshold(collection: Path, tmp_path: Path) -> None:
    """Neither the index nor the (tiny) model carries a calibration."""
    assert_one_line_error(invoke("verify", "photos/a.png", "photos/b.png", cwd=collection), "no calibration")
    assert_one_line_error(invoke("verify", "photos/a.png", "photos/b.png", "--precision", "0.99", cwd=collection),
                          "no calibration")
    assert_one_line_error(invoke("verify", "photos/a.png", "photos/missing.png", "--threshold", "0.5",
                                 cwd=collection), "no such file")
    photos = open_collection(collection / ".simsearch")
    save_calibration(photos.index, photos.model, "accuracy", 0.42, {"accuracy": 0.9})
    assert photos.threshold() == 0.42
    with pytest.raises(CalibrationError, match="it measured no precision level"):
        photos.threshold(precision=0.99)
    other_model = load_model(save_tiny_model(tmp_path / "other.safetensors", seed=1))
    assert latest_calibration(photos.index, other_model.content_hash) is None
    with pytest.raises(CalibrationError):
        open_collection(collection / ".simsearch", model=other_model).threshold()


def test_another_models_vectors_are_never_searched(collection: Path) -> None:
    """Verify works with any model, but the index's vectors only answer to the model that made them."""
    other_model = load_model(Path(__file__).parent / ".." / "retrieval" / "weights" / "photo-default.safetensors")
    other = open_collection(collection / ".simsearch", model=other_model)
    assert other.verify(collection / "photos/a.png", collection / "photos/a-copy.png", threshold=0.5).same
    with pytest.raises(ModelMismatchError, match="search it with its own model"):
        other.query([collection / "photos/a.png"])
    with pytest.raises(ModelMismatchError, match="search it with its own model"):
        other.query_vector("upload", other.embed_files([collection / "photos/a.png"])[0])  # what the server asks
    with pytest.raises(ModelMismatchError):
        other.dedup(threshold=0.5)
    with pytest.raises(ModelMismatchError):
        list(other.stream_duplicates([str(collection / "photos/a.png")], threshold=0.5))


def test_dedup_groups_copies_with_the_largest_as_keeper(collection: Path) -> None:
    threshold = str(distance(collection, "photos/a.png", "photos/a-small.png") + 1e-4)
    result = invoke("dedup", "--threshold", threshold, "--json", cwd=collection)
    assert result.exit_code == 0, result.output
    groups = json.loads(result.stdout)
    assert len(groups) == 1
    keeper = Path(groups[0]["keeper"]["path"])
    assert keeper.name in ("a.png", "a-copy.png") and groups[0]["keeper"]["width"] == 128
    assert sorted(Path(d["path"]).name for d in groups[0]["duplicates"]) == sorted(
        {"a.png", "a-copy.png", "a-small.png"} - {keeper.name})

    listed = invoke("dedup", "--threshold", threshold, "--print0", cwd=collection).stdout
    assert listed.endswith("\0") and len(listed.split("\0")) == 3
    rows = list(csv.DictReader(io.StringIO(invoke("dedup", "--threshold", threshold, "--csv", cwd=collection).stdout)))
    assert [row["role"] for row in rows] == ["keeper", "copy", "duplicate"], "the exact copy is named as one"
    ids = [groups[0]["keeper"]["image_id"], *(d["image_id"] for d in groups[0]["duplicates"])]
    assert len(set(ids)) == 3 and all(isinstance(i, int) for i in ids), "each image is named by its id"
    assert sorted(int(row["image_id"]) for row in rows) == sorted(ids), "CSV and JSON name the same images"
    assert all((collection / "photos" / name).exists() for name in ("a.png", "a-copy.png", "a-small.png"))


def test_dedup_of_given_paths_indexes_them_and_looks_only_there(collection: Path) -> None:
    extra = collection / "extra"
    extra.mkdir()
    photo(3, (128, 96)).save(extra / "d-again.png")
    shutil.copy(collection / "photos" / "e.png", extra / "e-again.png")
    result = invoke("dedup", "extra", "--threshold", str(COPY_THRESHOLD), "--json", cwd=collection)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []
    everything = json.loads(invoke("dedup", "--threshold", str(COPY_THRESHOLD), "--json", cwd=collection).stdout)
    names = sorted(sorted([Path(g["keeper"]["path"]).name] + [Path(d["path"]).name for d in g["duplicates"]])
                   for g in everything)
    assert ["d-again.png", "d.png"] in names and ["e-again.png", "e.png"] in names


def test_dedup_of_given_paths_exits_1_when_some_could_not_be_indexed(collection: Path) -> None:
    extra = collection / "extra"
    extra.mkdir()
    shutil.copy(collection / "photos" / "e.png", extra / "e-again.png")
    (extra / "broken.jpg").write_bytes(b"not a jpeg")
    result = invoke("dedup", "extra", "--threshold", str(COPY_THRESHOLD), "--json", cwd=collection)
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout) == [], "the groups are still printed"
    assert "1 file could not be indexed and is left out" in result.stderr


def test_dedup_stdin_streams_one_json_line_per_input(collection: Path) -> None:
    new = collection / "new"
    new.mkdir()
    photo(7, (128, 96)).save(new / "fresh.png")
    shutil.copy(new / "fresh.png", new / "fresh-again.png")
    shutil.copy(collection / "photos" / "c.png", new / "c-again.png")
    (new / "broken.png").write_bytes(b"not an image")
    lines = "\n".join(["new/fresh.png", "new/fresh-again.png", "new/c-again.png", "new/broken.png"]) + "\n"
    result = invoke("dedup", "--stdin", "--threshold", str(COPY_THRESHOLD), cwd=collection, input=lines)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["duplicate_of"]).name if r["duplicate_of"] else None for r in records] == [
        None, "fresh.png", "c.png", None]
    assert "error" in records[3] and result.exit_code == 1


def test_dedup_bad_input(collection: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    assert_one_line_error(invoke("dedup", "--json", "--csv", "--threshold", "0.1", cwd=collection), "choose one")
    assert_one_line_error(invoke("dedup", "nowhere", "--threshold", "0.1", cwd=collection), "no such file")
    assert_one_line_error(invoke("dedup", "--threshold", "0.1", cwd=tmp_path_factory.mktemp("elsewhere")),
                          "no index found")


def test_python_api_queries_and_dedups_in_process(collection: Path) -> None:
    photos = open_collection(collection / ".simsearch")
    (hit, *_), = [result.neighbours for result in photos.query([collection / "photos" / "b.png"], k=1)]
    assert Path(hit.path).name == "b.png" and hit.distance == pytest.approx(0.0, abs=1e-5)
    groups = photos.dedup(threshold=COPY_THRESHOLD)
    assert [sorted(Path(p).name for p in [g.keeper.path, *(o.path for o in g.others)]) for g in groups] == [
        ["a-copy.png", "a.png"]]
    Image.open(collection / "photos" / "a.png").verify()


def test_classify_names_the_nearest_support_class_or_unknown(collection: Path) -> None:
    support = collection / "support"
    for name, seed in (("alpha", 0), ("beta", 1), ("gamma", 2)):
        (support / name).mkdir(parents=True)
        photo(seed, (128, 96)).save(support / name / "1.png")
    queries = ["photos/a-small.png", "photos/b.png", "photos/e.png", "photos/missing.png"]
    result = invoke("classify", "--support", "support", *queries, "--json", cwd=collection)
    assert result.exit_code == 1, result.output
    rows = json.loads(result.stdout)
    assert [r["nearest_label"] for r in rows[:2]] == ["alpha", "beta"]
    assert rows[0]["label"] == "alpha" and rows[3]["error"].endswith("no such file")
    assert rows[0]["threshold"] is None and "every query gets its nearest class" in result.stderr
    e_distance = rows[2]["distance"]
    strict = invoke("classify", "--support", "support", "photos/b.png", "photos/e.png", "--threshold",
                    str(e_distance / 2), "--prototype", "--json", cwd=collection)
    assert strict.exit_code == 0, strict.output
    assert [(r["label"], r["threshold_source"]) for r in json.loads(strict.stdout)] == [("beta", "given"),
                                                                                         (None, "given")]
    nothing = invoke("classify", "--support", "support", "photos/missing.png", cwd=collection)
    assert nothing.exit_code == 2 and nothing.stderr.endswith("photos/missing.png: no such file\n"), nothing.output


def test_classify_refuses_a_support_class_without_images(collection: Path) -> None:
    support = collection / "support"
    (support / "alpha").mkdir(parents=True)
    photo(0).save(support / "alpha" / "1.png")
    (support / "beta").mkdir()
    assert_one_line_error(invoke("classify", "--support", "support", "photos/a.png", cwd=collection),
                          "support class 'beta' has no images")


def test_not_duplicates_holds_by_content_across_moves_cli_and_server(tmp_path: Path, tiny_model_file: Path) -> None:
    """Two near copies group; once decided apart they never do again, after a move and a re-index too, and the
    server honours the same decision; exact copies are marked as such; decisions export as JSON."""
    folder = tmp_path / "p"
    folder.mkdir()
    photo(0, (96, 72)).save(folder / "a.png")
    photo(0, (80, 60)).save(folder / "a-small.png")
    (folder / "a-copy.png").write_bytes((folder / "a.png").read_bytes())
    photo(5).save(folder / "other.png")
    index = ["--index", "idx"]
    assert invoke("index", "p", *index, "--model", str(tiny_model_file), "--workers", "0", cwd=tmp_path).exit_code == 0

    def groups() -> list[dict[str, object]]:
        result = invoke("dedup", *index, "--threshold", "0.05", "--json", cwd=tmp_path)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    [group] = groups()
    kinds = {Path(d["path"]).name: d["copy"] for d in group["duplicates"]}  # type: ignore[index, union-attr]
    assert kinds == {"a-copy.png": True, "a-small.png": False} and group["decided_by"] == "oldest"  # the copy is as large: written later
    assert invoke("keep", "p/a-small.png", *index, cwd=tmp_path).exit_code == 0
    [group] = groups()
    assert Path(group["keeper"]["path"]).name == "a-small.png" and group["decided_by"] == "chosen"  # type: ignore[index]
    assert invoke("not-duplicates", "p/a.png", "p/a-small.png", *index, cwd=tmp_path).exit_code == 0
    [group] = groups()
    assert [Path(d["path"]).name for d in group["duplicates"]] == ["a-copy.png"]  # type: ignore[index, union-attr]
    (folder / "a-small.png").rename(folder / "moved.png")
    assert invoke("index", "p", *index, "--workers", "0", cwd=tmp_path).exit_code == 0
    assert [Path(d["path"]).name for d in groups()[0]["duplicates"]] == ["a-copy.png"]  # type: ignore[index, union-attr]
    decision, kept = json.loads(invoke("decisions", *index, cwd=tmp_path).stdout)
    assert decision["decision"] == "not-duplicates" and str(folder / "moved.png") in (
        decision["first_paths"] + decision["second_paths"])
    assert kept["decision"] == "keep" and [Path(p).name for p in kept["paths"]] == ["moved.png"]
    assert_one_line_error(invoke("not-duplicates", "p/a.png", "p/nowhere.png", *index, cwd=tmp_path),
                          "not an indexed image")
    pytest.importorskip("fastapi", reason="the server's extra is not installed")
    from fastapi.testclient import TestClient

    from server.app import create_app

    with TestClient(create_app(tmp_path / "idx"), base_url="http://127.0.0.1",  # a Host the server answers to
                    headers={"X-Simsearch-Request": "1"}) as api:  # what an API client sends for duplicate groups
        page = api.get("/api/duplicates", params={"threshold": 0.05}).json()
        assert [Path(d["path"]).name for d in page["groups"][0]["duplicates"]] == ["a-copy.png"]
        same = api.post("/api/decisions", json={"a": str(folder / "a.png"), "b": str(folder / "a-copy.png")})
        assert same.status_code == 422 and "exact copies are duplicates" in same.json()["detail"]
        assert api.post("/api/decisions", json={"a": str(folder / "a.png"), "b": str(folder / "other.png")}).json() \
            == {"new": True}
        assert len(api.get("/api/decisions").json()) == 3
        assert api.post("/api/keepers", json={"path": str(folder / "moved.png")}).json() == {"new": False}, \
            "moved.png holds the content already chosen"


def test_keep_rules_and_a_reference_folder_from_the_cli(tmp_path: Path, tiny_model_file: Path) -> None:
    (tmp_path / "archive").mkdir()
    (tmp_path / "new").mkdir()
    photo(0, (64, 48)).save(tmp_path / "archive" / "a.png")
    photo(0, (96, 72)).save(tmp_path / "new" / "a-large.jpg", quality=95)
    photo(0, (80, 60)).save(tmp_path / "new" / "a-mid.png")
    index = ["--index", "idx", "--threshold", "0.1", "--json"]
    assert invoke("index", "archive", "new", "--index", "idx", "--model", str(tiny_model_file), "--workers", "0",
                  cwd=tmp_path).exit_code == 0
    [group] = json.loads(invoke("dedup", *index, "--keep", "format:png,largest", cwd=tmp_path).stdout)
    assert Path(group["keeper"]["path"]).name == "a-mid.png" and group["decided_by"] == "largest"
    [group] = json.loads(invoke("dedup", *index, "--reference", "archive", cwd=tmp_path).stdout)
    assert Path(group["keeper"]["path"]).parent.name == "archive" and group["decided_by"] == "protected"
    assert sorted(Path(d["path"]).name for d in group["duplicates"]) == ["a-large.jpg", "a-mid.png"]
    assert_one_line_error(invoke("dedup", *index, "--keep", "biggest", cwd=tmp_path), "'biggest' is not a rule")
