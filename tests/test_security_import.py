"""Import files and database rows that name files the index never held (issue 22, items 4-6).

A crafted import file must never make `dedup --print0` (whose output the README pipes to `xargs -0 rm`) name a
file that was not indexed, nor make a content hash a file name outside the index directory. Every bad row is
refused whole: one line, exit 2, and the index as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tracemalloc
from contextlib import closing
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import assert_one_line_error, invoke, photo


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_model_file: Path) -> Path:
    """Three photos and a byte copy of the first, indexed in `idx`, exported to `good.parquet`."""
    root = tmp_path_factory.mktemp("built")
    (root / "p").mkdir()
    for i in range(3):
        photo(i).save(root / "p" / f"img{i:04d}.png")
    shutil.copy(root / "p" / "img0000.png", root / "p" / "img0000-copy.png")
    result = invoke("index", "p", "--index", "idx", "--model", str(tiny_model_file), "--workers", "0", cwd=root)
    assert result.exit_code == 0, result.output
    assert invoke("export", "good.parquet", "--index", "idx", cwd=root).exit_code == 0
    return root


@pytest.fixture
def case(tmp_path: Path, built: Path) -> Path:
    """A folder of its own with a copy of the built index (its rows name the built photos) and the good export."""
    shutil.copytree(built / "idx", tmp_path / "idx")
    shutil.copy(built / "good.parquet", tmp_path / "good.parquet")
    return tmp_path


def database_rows(folder: Path) -> list[tuple[object, ...]]:
    """Every image row and every vector of the index in `folder/idx`, as they are in the database."""
    with closing(sqlite3.connect(folder / "idx" / "index.db")) as db:
        return (db.execute("SELECT * FROM images ORDER BY id").fetchall()
                + db.execute("SELECT id, model_id, content_hash FROM vectors ORDER BY id").fetchall())


def write_rows(good: Path, out: Path, rows: list[dict[str, object]], tag: dict[bytes, bytes] | None = None,
               drop: str | None = None) -> Path:
    """`rows` (with their vectors) as an export file tagged as `good` is, or with `tag`; without column `drop`."""
    table = pq.read_table(good)
    changed = pa.Table.from_pylist(rows, schema=table.schema)
    if drop is not None:
        changed = changed.drop_columns([drop])
    pq.write_table(changed.replace_schema_metadata(table.schema.metadata if tag is None else tag), out)
    return out


def good_rows(folder: Path) -> list[dict[str, object]]:
    return pq.read_table(folder / "good.parquet").to_pylist()


def assert_refused(folder: Path, args: list[str], *texts: str) -> None:
    """`import ARGS` is one line (exit 2) naming each of `texts`, and the index is as it was."""
    before = database_rows(folder)
    result = invoke("import", *args, "--index", "idx", cwd=folder)
    assert_one_line_error(result, texts[0])
    assert all(text in result.output for text in texts), result.output
    assert database_rows(folder) == before, "a refused import writes nothing"


BAD_FIELDS = {
    "relative path": ("path", "victim.txt"),
    "dot-dot path": ("path", "/tmp/../etc/img.png"),
    "dot path": ("path", "/tmp/./img.png"),
    "double slash": ("path", "/tmp//img.png"),
    "NUL in path": ("path", "/tmp/img\0.png"),
    "no size": ("size", None),
    "no mtime": ("mtime_ns", None),
    "negative size": ("size", -1),
    "negative mtime": ("mtime_ns", -5),
    "traversal hash": ("content_hash", "../../outside/pwned"),
    "upper-case hash": ("content_hash", "A" * 64),
    "short hash": ("content_hash", "a" * 63),
}


@pytest.mark.parametrize("field, value", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_a_bad_row_anywhere_refuses_the_whole_import(case: Path, field: str, value: object) -> None:
    rows = good_rows(case)
    rows[2][field] = value
    write_rows(case / "good.parquet", case / "first.parquet", rows[:1])
    write_rows(case / "good.parquet", case / "bad.parquet", rows[1:])
    assert_refused(case, ["bad.parquet"], f"bad.parquet: row 2: {field} ")
    assert_refused(case, ["first.parquet", "bad.parquet"], f"bad.parquet: row 2: {field} ")  # nor the good file


@pytest.mark.parametrize("column", ["size", "mtime_ns"])
def test_a_missing_size_or_mtime_column_is_refused(case: Path, column: str) -> None:
    write_rows(case / "good.parquet", case / "bad.parquet", good_rows(case), drop=column)
    assert_refused(case, ["bad.parquet"], f"no {column} column")


def test_duplicate_paths_are_refused_in_one_file_and_across_files(case: Path) -> None:
    rows = good_rows(case)
    rows[3]["path"] = rows[1]["path"]
    write_rows(case / "good.parquet", case / "twice.parquet", rows)
    assert_refused(case, ["twice.parquet"], "twice.parquet: row 4: path", "comes twice")
    assert_refused(case, ["good.parquet", "good.parquet"], "good.parquet: row 1: path", "comes twice")


TAGS = {
    "a JSON list": [1, 2],
    "no model hash": {"model_name": "tiny-0", "dim": 16, "format": 1},
    "a model hash that is a path": {"model_hash": "../../models/x", "model_name": "tiny-0", "dim": 16, "format": 1},
    "no dimension": {"model_hash": "0" * 64, "model_name": "tiny-0", "format": 1},
}


@pytest.mark.parametrize("tag", TAGS.values(), ids=TAGS.keys())
def test_a_bad_model_tag_is_refused(case: Path, tag: object) -> None:
    write_rows(case / "good.parquet", case / "bad.parquet", good_rows(case), {b"simsearch": json.dumps(tag).encode()})
    assert_refused(case, ["bad.parquet"], "bad.parquet: its simsearch model tag")


def test_a_huge_npy_header_is_refused_before_anything_is_allocated(case: Path) -> None:
    """(10,000,000, 1280) float32 is 47.7 GiB: the header is checked against the metadata and the file's size."""
    assert invoke("export", "shards", "--format", "npy", "--index", "idx", cwd=case).exit_code == 0
    shard = case / "shards" / "embeddings" / "img_emb_0000.npy"
    with shard.open("wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False,
                                                      "shape": (10_000_000, 1280)})
        handle.write(b"\0" * 64)
    tracemalloc.start()
    try:
        assert_refused(case, ["shards"], "(10000000, 1280)")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 2**20, f"{peak / 2**20:.0f} MiB allocated"


def test_an_npy_shard_shorter_than_its_header_is_refused(case: Path) -> None:
    assert invoke("export", "shards", "--format", "npy", "--index", "idx", cwd=case).exit_code == 0
    shard = case / "shards" / "embeddings" / "img_emb_0000.npy"
    shard.write_bytes(shard.read_bytes()[:-4])
    assert_refused(case, ["shards"], "img_emb_0000.npy")


@pytest.mark.parametrize("pixels", [1, 9999], ids=["proposed", "keeper"])
def test_a_row_imported_for_an_unrelated_file_is_never_in_dedup(case: Path, built: Path, pixels: int) -> None:
    """The row names an existing file with its true size and mtime and the vector of a photo: a valid row, but
    nothing ever indexed that file, so dedup neither proposes it nor lets it keep over the photo."""
    victim = case / "victim.txt"
    victim.write_text("the only copy of something precious")
    info = victim.stat()
    [row] = [row for row in good_rows(case) if str(row["path"]).endswith("img0000.png")]
    forged = {**row, "path": str(victim), "size": info.st_size, "mtime_ns": info.st_mtime_ns, "width": pixels,
              "height": pixels}
    write_rows(case / "good.parquet", case / "forged.parquet", [forged])
    imported = invoke("import", "forged.parquet", "--index", "idx", cwd=case)
    assert imported.exit_code == 0 and "imported 1 image" in imported.output, imported.output
    dedup = invoke("dedup", "--print0", "--threshold", "0.01", "--index", "idx", cwd=case)
    assert dedup.exit_code == 0, dedup.output
    assert dedup.stdout.split("\0")[:-1] == [str(built / "p" / "img0000-copy.png")], dedup.stdout
    assert victim.is_file()


def test_an_imported_row_is_proposed_once_index_has_seen_its_file(case: Path, built: Path) -> None:
    """The rule is not "never": a true row (another copy of a photo) counts once `simsearch index` over its folder
    has seen the file and recorded its device and inode."""
    (case / "more").mkdir()
    again = shutil.copy(built / "p" / "img0000.png", case / "more" / "img0000-again.png")
    info = os.stat(again)
    [row] = [row for row in good_rows(case) if str(row["path"]).endswith("img0000.png")]
    write_rows(case / "good.parquet", case / "true.parquet",
               [{**row, "path": str(again), "size": info.st_size, "mtime_ns": info.st_mtime_ns}])
    assert invoke("import", "true.parquet", "--index", "idx", cwd=case).exit_code == 0

    def proposed() -> set[str]:
        dedup = invoke("dedup", "--print0", "--threshold", "0.01", "--index", "idx", cwd=case)
        assert dedup.exit_code == 0, dedup.output
        return set(dedup.stdout.split("\0")[:-1])

    copy = str(built / "p" / "img0000-copy.png")
    assert proposed() == {copy}
    indexed = invoke("index", "more", "--index", "idx", "--workers", "0", cwd=case)
    assert indexed.exit_code == 0 and "added 0" in indexed.output, indexed.output
    assert proposed() == {copy, str(again)}


def test_a_path_with_a_nul_in_the_database_is_left_out_of_dedup(case: Path, built: Path) -> None:
    copy = str(built / "p" / "img0000-copy.png")
    with closing(sqlite3.connect(case / "idx" / "index.db")) as db, db:
        db.execute("UPDATE images SET path = ? WHERE path = ?", (copy + "\0x", copy))
    dedup = invoke("dedup", "--print0", "--threshold", "0.01", "--index", "idx", cwd=case)
    assert dedup.exit_code == 0 and "Traceback" not in dedup.output, dedup.output
    assert dedup.stdout == "", "the row's path reaches no file"


def test_a_hash_planted_in_the_database_is_never_a_file_name(case: Path, built: Path) -> None:
    from retrieval.errors import CorruptIndexError
    from retrieval.index import open_index
    from server.thumbnails import thumbnail

    target = str(built / "p" / "img0001.png")
    with closing(sqlite3.connect(case / "idx" / "index.db")) as db, db:
        db.execute("UPDATE images SET content_hash = '../../outside/pwned' WHERE path = ?", (target,))
        [(image_id,)] = db.execute("SELECT id FROM images WHERE path = ?", (target,)).fetchall()
    (case / "idx" / "thumbnails").mkdir()
    (case / "outside").mkdir()
    with pytest.raises(CorruptIndexError, match="content hash that is no SHA-256"):
        thumbnail(open_index(case / "idx"), image_id)
    assert list((case / "outside").iterdir()) == [], "nothing written outside the index directory"
    dedup = invoke("dedup", "--print0", "--threshold", "0.01", "--index", "idx", cwd=case)
    assert_one_line_error(dedup, "content hash that is no SHA-256")


def test_an_npy_export_replaces_an_earlier_one_whole(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first export in four shards of one row, the second in one of four: no old shard is left to count."""
    monkeypatch.setattr("retrieval.sources.embedding_files.SHARD_ROWS", 1)
    assert invoke("export", "shards", "--format", "npy", "--index", "idx", cwd=case).exit_code == 0
    assert len(list((case / "shards" / "embeddings").iterdir())) == 4
    monkeypatch.undo()
    again = invoke("export", "shards", "--format", "npy", "--index", "idx", cwd=case)
    assert again.exit_code == 0 and "exported 4 images" in again.output, again.output
    assert sorted(p.name for p in (case / "shards").rglob("*") if p.is_file()) == [
        "img_emb_0000.npy", "metadata_0000.parquet"]
    assert not [p.name for p in case.iterdir() if p.name.startswith(".shards")], "nothing left beside it"
    imported = invoke("import", "shards", "--index", "idx", cwd=case)
    assert imported.exit_code == 0 and "imported 4 images" in imported.output, imported.output


def test_an_npy_export_into_a_folder_of_other_files_is_refused(case: Path) -> None:
    (case / "notes").mkdir()
    (case / "notes" / "todo.txt").write_text("mine")
    result = invoke("export", "notes", "--format", "npy", "--index", "idx", cwd=case)
    assert_one_line_error(result, "notes holds todo.txt, which no export wrote")
    assert sorted(p.name for p in (case / "notes").rglob("*")) == ["todo.txt"]
    assert_one_line_error(invoke("export", "notes/todo.txt", "--format", "npy", "--index", "idx", cwd=case),
                          "is a file")
    assert (case / "notes" / "todo.txt").read_text() == "mine"
