"""The command line as a user meets it: output, exit codes, one-line errors."""

from __future__ import annotations

import io
import json
import shutil
import struct
from pathlib import Path


from conftest import REPO, assert_one_line_error, invoke, simsearch

def test_missing_path_empty_folder_and_no_index(tmp_path: Path) -> None:
    assert_one_line_error(invoke("index", "nowhere", cwd=tmp_path), "no such file or directory")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(invoke("index", "empty", cwd=tmp_path), "no image files found")
    query = tmp_path / "q.png"
    shutil.copy(REPO / "demo" / "queries" / "motorcycle_right.png", query)
    assert_one_line_error(invoke("query", str(query), cwd=tmp_path / "empty"), "no index found")


def test_unreadable_index_is_a_one_line_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "index.db").write_bytes(b"this is not a database" * 100)
    result = invoke("query", "--index", str(broken), str(REPO / "demo" / "queries" / "motorcycle_right.png"),
                    cwd=tmp_path)
    assert_one_line_error(result, "cannot open the index database")
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = invoke("index", "--index", str(not_a_dir), str(REPO / "demo" / "photos"), cwd=tmp_path)
    assert_one_line_error(result, "cannot create index directory")


def test_index_then_query_the_demo_photos(tmp_path: Path) -> None:
    """The README's main job, with the real default model: the other view of the stereo pair is
    the nearest neighbour of the query."""
    photos = tmp_path / "photos"
    shutil.copytree(REPO / "demo" / "photos", photos)
    result = invoke("index", "photos", "--workers", "0", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert "added 10" in result.output

    query = REPO / "demo" / "queries" / "motorcycle_right.png"
    result = invoke("query", str(query), str(photos / "chelsea.png"), "-k", "3", "--json", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [r["query"] for r in payload] == [str(query), str(photos / "chelsea.png")]
    motorcycle, cat = payload
    assert Path(motorcycle["neighbours"][0]["path"]).name == "motorcycle_left.png"
    assert [n["rank"] for n in motorcycle["neighbours"]] == [1, 2, 3]
    nearest_cat = cat["neighbours"][0]
    assert isinstance(nearest_cat.pop("image_id"), int), "a result names its image, for a page or an API"
    assert nearest_cat == {"rank": 1, "distance": 0.0, "path": str(photos / "chelsea.png"), "label": None}

    table = invoke("query", str(query), "-k", "2", cwd=tmp_path)
    assert table.exit_code == 0
    assert "motorcycle_left.png" in table.stdout and "rank" in table.stdout

    rerun = invoke("index", "photos", cwd=tmp_path)
    assert rerun.exit_code == 0 and "skipped 10 unchanged" in rerun.output


def test_index_exit_code_reports_failed_files(tmp_path: Path, tiny_model_file: Path, make_photos) -> None:  # type: ignore[no-untyped-def]
    make_photos(tmp_path / "p", 2)
    (tmp_path / "p" / "bad.jpg").write_text("not an image")
    result = invoke("index", "p", "--model", str(tiny_model_file), "--workers", "0", cwd=tmp_path)
    assert result.exit_code == 1
    assert "warning" in result.output and "bad.jpg" in result.output and "failed 1" in result.output


def test_query_with_a_bad_image_answers_the_others(tmp_path: Path, tiny_model_file: Path, make_photos) -> None:  # type: ignore[no-untyped-def]
    photos = make_photos(tmp_path / "p", 3)
    assert invoke("index", "p", "--model", str(tiny_model_file), "--workers", "0", cwd=tmp_path).exit_code == 0
    (tmp_path / "bad.png").write_text("nope")
    result = invoke("query", str(photos[0]), str(tmp_path / "bad.png"), "-k", "1", "--json", cwd=tmp_path)
    assert result.exit_code == 1
    good, bad = json.loads(result.stdout)
    assert good["neighbours"][0]["path"] == str(photos[0])
    assert bad["error"] == "not a recognised image format"


def test_index_found_upward_and_through_the_environment(tmp_path: Path, tiny_model_file: Path, make_photos) -> None:  # type: ignore[no-untyped-def]
    photos = make_photos(tmp_path / "p", 2)
    assert invoke("index", "p", "--model", str(tiny_model_file), "--workers", "0", cwd=tmp_path).exit_code == 0
    deeper = tmp_path / "a" / "b"
    deeper.mkdir(parents=True)
    assert invoke("query", str(photos[0]), cwd=deeper).exit_code == 0
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.mkdir()
    env = {"SIMSEARCH_INDEX": str(tmp_path / ".simsearch")}
    assert invoke("query", str(photos[0]), cwd=elsewhere, env=env).exit_code == 0


def test_eval_scores_a_labelled_folder(tmp_path: Path, tiny_model_file: Path) -> None:
    """Two visibly different classes (dark and bright images) are told apart by any sane embedding."""
    from PIL import Image

    for label, base in (("dark", 20), ("bright", 235)):
        folder = tmp_path / "data" / label
        folder.mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (32, 32), (base + i, base - i, base)).save(folder / f"{i}.png")
    result = invoke("eval", str(tiny_model_file), "data", "--way", "2", "--episodes", "20", "--pairs", "20",
                    "--workers", "0", "--json", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 12 and report["classes"] == 2
    figures = report["figures"]
    assert figures["2-way 1-shot accuracy"]["value"] == 1.0
    assert figures["verification ROC AUC"]["value"] == 1.0
    assert figures["MAP@R"]["value"] == 1.0

    (tmp_path / "one" / "only").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "only" / "a.png")
    assert_one_line_error(invoke("eval", str(tiny_model_file), "one", "--workers", "0", cwd=tmp_path),
                          "at least two class subfolders")


def test_eval_reads_lake_one_shot_runs_zip(tmp_path: Path, tiny_model_file: Path) -> None:
    """Lake's layout: runNN/class_labels.txt maps each test image to its training image."""
    import io
    import zipfile

    from PIL import Image

    def png(seed: int) -> bytes:
        buffer = io.BytesIO()
        Image.effect_noise((32, 32), 40 + seed).convert("RGB").rotate(seed * 7).save(buffer, format="PNG")
        return buffer.getvalue()

    with zipfile.ZipFile(tmp_path / "all_runs.zip", "w") as archive:
        for run in range(1, 21):
            lines = []
            for trial in range(3):
                image = png(run * 10 + trial)
                archive.writestr(f"run{run:02d}/training/class{trial}.png", image)
                archive.writestr(f"run{run:02d}/test/item{trial}.png", image)
                lines.append(f"run{run:02d}/test/item{trial}.png run{run:02d}/training/class{(trial + 1) % 3}.png")
            archive.writestr(f"run{run:02d}/class_labels.txt", "\n".join(lines) + "\n")
    result = invoke("eval", str(tiny_model_file), "all_runs.zip", "--json", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)["figures"]
    (name, value), = figures.items()
    assert "Lake 20-way" in name and "60 trials" in name
    assert value["value"] == 0.0, "each query is identical to a support image that is not its answer"


def test_the_console_entry_point_keeps_exit_status_and_output(tmp_path: Path) -> None:
    """`main` leaves without the interpreter's teardown: the status and everything printed must still arrive."""
    import os
    import subprocess
    import sys

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", "from cli.main import main; main()", *args], cwd=tmp_path,
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)

    missing = run("query", "photo.jpg", "--index", str(tmp_path / "none"))
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"error: no simsearch index at {tmp_path / 'none'} (run `simsearch index PATH` first)"
    helped = run("--help")
    assert helped.returncode == 0
    assert all(command in helped.stdout for command in ("index", "query", "verify", "dedup", "classify", "calibrate"))


def test_query_exits_2_when_no_query_image_could_be_used(tmp_path: Path, tiny_model_file: Path, make_photos) -> None:  # type: ignore[no-untyped-def]
    """Missing, undecodable, a directory, a FIFO (never opened: it would block): nothing done, each said as
    what it is."""
    import os

    make_photos(tmp_path / "p", 2)
    assert invoke("index", "p", "--model", str(tiny_model_file), "--workers", "0", cwd=tmp_path).exit_code == 0
    (tmp_path / "bad.png").write_text("nope")
    (tmp_path / "folder.png").mkdir()
    os.mkfifo(tmp_path / "pipe.png")
    result = invoke("query", "missing.png", "bad.png", "folder.png", "pipe.png", "--json", cwd=tmp_path)
    assert result.exit_code == 2, result.output
    assert [r["error"] for r in json.loads(result.stdout)] == [
        "no such file", "not a recognised image format", "is a directory", "is a FIFO, not a regular file"]
    assert result.stderr.splitlines() == ["error: missing.png: no such file",
                                          "error: bad.png: not a recognised image format",
                                          "error: folder.png: is a directory",
                                          "error: pipe.png: is a FIFO, not a regular file"]
    some = invoke("query", "p/img0000.png", "folder.png", cwd=tmp_path)
    assert some.exit_code == 1 and "img0000.png" in some.stdout


def test_verify_says_a_directory_is_one(tmp_path: Path, tiny_model_file: Path, make_photos) -> None:  # type: ignore[no-untyped-def]
    make_photos(tmp_path / "p", 2)
    assert invoke("index", "p", "--model", str(tiny_model_file), "--workers", "0", cwd=tmp_path).exit_code == 0
    assert_one_line_error(invoke("verify", "p", "p/img0000.png", "--threshold", "0.5", cwd=tmp_path),
                          "p: is a directory")


def test_a_photo_with_a_corrupt_exif_block_indexes_without_pillows_warning(tmp_path: Path,
                                                                            tiny_model_file: Path) -> None:
    """Pillow warns on stderr, in two lines naming its own source file; the user sees simsearch's summary only."""
    from PIL import Image

    jpeg = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(jpeg, "JPEG")
    exif = b"Exif\0\0II*\0" + struct.pack("<IH", 8, 500) + b"\x01" * 40  # an IFD of 500 entries in 40 bytes
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "bad.jpg").write_bytes(jpeg.getvalue()[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2)
                                             + exif + jpeg.getvalue()[2:])
    done = simsearch("index", "p", "--index", "idx", "--model", str(tiny_model_file), "--workers", "0",
                     cwd=tmp_path)
    assert done.returncode == 0 and "added 1," in done.stderr, done.stderr
    assert "Warning" not in done.stderr and "warnings.warn" not in done.stderr, done.stderr
