"""Issue 23, items 2, 3 and 8: a collection of look-alikes gets only exact copies proposed, and says so; tiny and
flat images are judged on their pixels; verify, classify and the server decide by the same rule as dedup.

The tiny test model at a threshold of 4 (every pair of unit vectors lies within it) stands for an embedding that
collapses these images: whatever is not proposed here, the rules kept out."""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import invoke, photo
from retrieval.collection import open_collection
from retrieval.decisions.lookalikes import MIN_IMAGES, nearest_share, share_from_pairs
from retrieval.decisions.pixel_rule import PIXEL_TOLERANCE, indexed_signature, judge, signature
from retrieval.sources.file_identity import file_id
from server.app import create_app

EVERYTHING = "4"
"""A threshold within which every pair lies."""


def solid_colours(folder: Path, count: int = 40, side: int = 96) -> list[Path]:
    """`count` solid colours, at least 60 grey levels apart in some channel (a lattice of 4 x 4 x 3)."""
    folder.mkdir(parents=True, exist_ok=True)
    lattice = [(r, g, b) for r in (10, 80, 150, 220) for g in (10, 80, 150, 220) for b in (30, 130, 230)]
    paths = []
    for i, colour in enumerate(lattice[:count]):
        path = folder / f"colour{i:02d}.png"
        Image.new("RGB", (side, side), colour).save(path)
        paths.append(path)
    return paths


def index(root: Path, model: Path, folder: str = "p") -> None:
    result = invoke("index", folder, "--index", "idx", "--model", str(model), "--workers", "0", cwd=root)
    assert result.exit_code == 0, result.output


def dedup(root: Path, *options: str) -> tuple[list[dict], str]:  # type: ignore[type-arg]
    result = invoke("dedup", "--index", "idx", "--threshold", EVERYTHING, "--json", *options, cwd=root)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


def proposed(groups: list[dict]) -> list[str]:  # type: ignore[type-arg]
    return sorted(Path(str(other["path"])).name for group in groups for other in group["duplicates"])


def test_distinct_solid_colours_are_not_proposed_even_when_asked(tmp_path: Path, tiny_model_file: Path) -> None:
    solid_colours(tmp_path / "p")
    index(tmp_path, tiny_model_file)
    groups, said = dedup(tmp_path)
    assert groups == []
    [warning] = [line for line in said.splitlines() if line.startswith("warning")]
    assert "100% of these 40 distinct images lie within the threshold" in warning and "look-alikes" in warning
    assert "only exact copies are proposed" in warning and "--lookalikes" in warning
    asked, said = dedup(tmp_path, "--lookalikes")
    assert asked == [], "flat images are judged on their pixels, and these differ"
    assert "as asked" in said


def test_an_exact_copy_of_a_solid_colour_is_still_proposed(tmp_path: Path, tiny_model_file: Path) -> None:
    colours = solid_colours(tmp_path / "p")
    shutil.copy(colours[7], tmp_path / "p" / "copy-of-7.png")
    index(tmp_path, tiny_model_file)
    for options in ((), ("--lookalikes",)):
        groups, _ = dedup(tmp_path, *options)
        assert proposed(groups) == ["copy-of-7.png"] or proposed(groups) == ["colour07.png"]
        [duplicate] = groups[0]["duplicates"]
        assert duplicate["copy"] is True and duplicate["judged_on"] == "content"


def test_a_tiny_edited_copy_is_judged_on_its_pixels(tmp_path: Path, tiny_model_file: Path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    for i in range(5):
        photo(i, (48, 36)).save(folder / f"small{i}.png")
    photo(0, (48, 36)).save(folder / "small0-resaved.jpg", quality=85)
    photo(0, (40, 30)).save(folder / "small0-smaller.png")
    index(tmp_path, tiny_model_file)
    [group], _ = dedup(tmp_path)
    assert Path(group["keeper"]["path"]).name == "small0.png"
    assert proposed([group]) == ["small0-resaved.jpg", "small0-smaller.png"]
    for duplicate in group["duplicates"]:
        assert duplicate["judged_on"] == "pixels" and duplicate["pixels"]["why"] == "both are tiny"
        assert duplicate["pixels"]["agree"] and duplicate["pixels"]["difference"] <= PIXEL_TOLERANCE


def lookalikes(folder: Path, count: int = 30) -> None:
    """`count` distinct photos that are neither tiny nor flat, and an exact copy and an edited copy of the first."""
    folder.mkdir(parents=True)
    for i in range(count):
        photo(i, (128, 96)).save(folder / f"shot{i:02d}.png")
    shutil.copy(folder / "shot00.png", folder / "shot00-copy.png")
    photo(0, (128, 96)).save(folder / "shot00-edited.jpg", quality=70)


def test_a_collection_of_lookalikes_gets_only_exact_copies_unless_asked(tmp_path: Path,
                                                                        tiny_model_file: Path) -> None:
    lookalikes(tmp_path / "p")
    index(tmp_path, tiny_model_file)
    groups, said = dedup(tmp_path)
    assert proposed(groups) == ["shot00-copy.png"] and groups[0]["duplicates"][0]["copy"] is True
    assert sum(line.startswith("warning") for line in said.splitlines()) == 1
    table = invoke("dedup", "--index", "idx", "--threshold", EVERYTHING, cwd=tmp_path)
    assert table.exit_code == 0 and "look-alikes" in table.stderr, table.output
    asked, _ = dedup(tmp_path, "--lookalikes")
    assert len(proposed(asked)) == 31, "every other image, judged on the embedding, is within the threshold"
    assert {d["judged_on"] for g in asked for d in g["duplicates"]} == {"embedding", "content"}


def test_the_python_api_says_so_and_asks_for_more(tmp_path: Path, tiny_model_file: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    lookalikes(tmp_path / "p")
    index(tmp_path, tiny_model_file)
    photos = open_collection(tmp_path / "idx")
    with caplog.at_level(logging.WARNING, logger="retrieval"):
        groups = photos.dedup(threshold=float(EVERYTHING))
    assert [len(group.others) for group in groups] == [1] and groups[0].copies == [True]
    assert any("look-alikes" in record.getMessage() for record in caplog.records)
    found = photos.find_duplicates(float(EVERYTHING), lookalikes=True)
    check = found.lookalikes
    assert check.lookalikes and check.asked and not check.exact_only and check.share == 1.0 and check.images == 31
    assert sum(len(group.others) for group in found.groups) == 31


def test_a_small_collection_is_not_taken_for_lookalikes(tmp_path: Path, tiny_model_file: Path) -> None:
    lookalikes(tmp_path / "p", count=MIN_IMAGES - 3)  # 17 photos and the edited copy: 18 contents
    index(tmp_path, tiny_model_file)
    groups, said = dedup(tmp_path)
    assert len(proposed(groups)) == MIN_IMAGES - 2 and "warning" not in said


def test_the_share_is_of_distinct_contents_with_a_neighbour_within_the_threshold() -> None:
    rng = np.random.default_rng(0)
    far = rng.standard_normal((40, 32))
    far /= np.linalg.norm(far, axis=1, keepdims=True)
    near = far.copy()
    near[1::2] = far[::2] + 0.01 * rng.standard_normal((20, 32))  # 20 pairs of near copies
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    assert nearest_share(far, 0.1).share == 0.0
    half = nearest_share(near, 0.1)
    assert half.share == 1.0 and half.lookalikes and half.sampled == 40
    sampled = nearest_share(near, 0.1, sample=10)
    assert sampled.sampled == 10 and sampled.images == 40 and sampled.share == 1.0
    assert "measured on 10 of them" in sampled.message()
    graph = share_from_pairs(40, np.array([0, 2]), np.array([1, 3]))  # an approximate index's kNN-graph pairs
    assert graph.share == 0.1 and not graph.lookalikes


def test_verify_on_two_different_flat_images_says_different(tmp_path: Path, tiny_model_file: Path) -> None:
    a, b = solid_colours(tmp_path, count=2)
    result = invoke("verify", str(a), str(b), "--threshold", EVERYTHING, "--model", str(tiny_model_file),
                    cwd=tmp_path)
    assert result.exit_code == 1, result.output
    assert result.stdout.startswith("different") and "judged on pixels (both are flat)" in result.stdout
    same = invoke("verify", str(a), str(a), "--threshold", EVERYTHING, "--model", str(tiny_model_file), "--json",
                  cwd=tmp_path)
    assert same.exit_code == 0, same.output
    verdict = json.loads(same.stdout)
    assert verdict["judged_on"] == "pixels" and verdict["pixels"]["difference"] == 0.0


def test_classify_judges_a_flat_query_on_its_pixels(tmp_path: Path, tiny_model_file: Path) -> None:
    red, blue, blue_again = solid_colours(tmp_path / "colours", count=3)
    for label, source in (("red", red), ("blue", blue)):
        (tmp_path / "support" / label).mkdir(parents=True)
        shutil.copy(source, tmp_path / "support" / label / "1.png")
    result = invoke("classify", str(blue_again), str(blue), "--support", "support", "--threshold", EVERYTHING,
                    "--model", str(tiny_model_file), "--json", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    other, itself = json.loads(result.stdout)
    assert other["label"] is None and other["pixels"]["agree"] is False, "another flat colour is unknown"
    assert itself["label"] == "blue" and itself["pixels"]["agree"] is True


def test_the_servers_duplicates_carry_the_flag_and_similarities(tmp_path: Path, tiny_model_file: Path) -> None:
    lookalikes(tmp_path / "p")
    index(tmp_path, tiny_model_file)
    api = TestClient(create_app(tmp_path / "idx"), base_url="http://127.0.0.1",
                     headers={"X-Simsearch-Request": "1"})
    answer = api.get("/api/duplicates", params={"threshold": EVERYTHING})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["lookalikes"]["lookalikes"] is True and body["lookalikes"]["exact_copies_only"] is True
    assert "look-alikes" in body["lookalikes"]["message"] and body["total"] == 1
    assert body["threshold_similarity"] == -1.0
    [duplicate] = body["groups"][0]["duplicates"]
    assert duplicate["copy"] is True and duplicate["similarity"] == 1.0
    asked = api.get("/api/duplicates", params={"threshold": EVERYTHING, "lookalikes": "true"}).json()
    assert asked["lookalikes"]["exact_copies_only"] is False and asked["total"] >= 1
    assert all("similarity" in d for g in asked["groups"] for d in g["duplicates"])


def test_the_servers_verify_uses_the_pixel_rule(tmp_path: Path, tiny_model_file: Path) -> None:
    lookalikes(tmp_path / "p", count=2)
    index(tmp_path, tiny_model_file)
    a, b = solid_colours(tmp_path / "colours", count=2)
    api = TestClient(create_app(tmp_path / "idx"), base_url="http://127.0.0.1",
                     headers={"X-Simsearch-Request": "1"})
    answer = api.post("/api/verify", files={"a": ("a.png", a.read_bytes()), "b": ("b.png", b.read_bytes())},
                      data={"threshold": EVERYTHING})
    assert answer.status_code == 200, answer.text
    verdict = answer.json()
    assert verdict["same"] is False and verdict["judged_on"] == "pixels"
    assert "similarity" in verdict and "threshold_similarity" in verdict


def test_the_pixel_rule_reads_only_the_file_indexed_there(tmp_path: Path) -> None:
    path = tmp_path / "flat.png"
    Image.new("RGB", (200, 100), (40, 90, 200)).save(path)
    look = signature(path)
    assert look.flat and not look.tiny and look.why == "flat" and (look.width, look.height) == (200, 100)
    info = path.stat()
    assert indexed_signature(str(path), file_id(info), info.st_size, info.st_mtime_ns) is not None
    assert indexed_signature(str(path), file_id(info), info.st_size + 1, info.st_mtime_ns) is None
    assert indexed_signature(str(path), None, info.st_size, info.st_mtime_ns) is None, "fails closed"
    data = io.BytesIO()
    photo(0, (640, 480)).save(data, "PNG")
    photo_look = signature(data.getvalue())
    assert photo_look.why is None and judge(photo_look, photo_look) is None, "the embedding judges photos"
    unreadable = judge(look, None)
    assert unreadable is not None and not unreadable.agree, "a file not as indexed is no duplicate"
