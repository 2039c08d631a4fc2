"""Faults while indexing: a kill at every commit point, a full disk, a bad device, a damaged index directory.

After every fault the index opens, queries answer correctly on what was committed, a re-run completes with one
row per file, and the user saw a one-line error (never a traceback) with the README's exit codes.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event, func, select

from conftest import REPO, save_tiny_model, simsearch
from indexer.pipeline import IndexOptions, index_paths
from retrieval.errors import IndexWriteError
from retrieval.index import SimilarityIndex, create_index, open_index
from retrieval.models.embedding import Embedder
from retrieval.models.model import EmbeddingModel
from retrieval.store.schema import ImageRecord
from retrieval.vectors.search import query_files

FAST = IndexOptions(batch_size=2, workers=0)

KILLER = """
import os, signal, sys

from sqlalchemy import event
from sqlalchemy.orm import Session

left = int(os.environ["KILL_AT"])


def countdown(*_):
    global left
    left -= 1
    if left == 0:
        os.kill(os.getpid(), signal.SIGKILL)


event.listen(Session, "after_commit", countdown)  # each committed transaction
replace = os.replace


def replace_then_count(*args, **kwargs):  # each atomic file write, killed between writing and renaming
    countdown()
    return replace(*args, **kwargs)


os.replace = replace_then_count
from cli.main import main

sys.argv = ["simsearch", *sys.argv[1:]]
main()
"""


def assert_one_line_error(result: subprocess.CompletedProcess[str], text: str, code: int = 2) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and text in errors[0], result.stderr


def rows(index: SimilarityIndex) -> list[str]:
    with index.store.reading() as session:
        return list(session.scalars(select(ImageRecord.path).where(ImageRecord.status == "ok")))


def answers_itself(index: SimilarityIndex, model: EmbeddingModel, paths: list[str]) -> bool:
    results = query_files(index, Embedder(model), [Path(p) for p in paths], 1)
    return [r.neighbours[0].path for r in results] == paths


def test_a_kill_at_every_commit_point_leaves_a_usable_index(tmp_path: Path, make_photos) -> None:  # type: ignore[no-untyped-def]
    photos = make_photos(tmp_path / "p", 6)
    model_file = save_tiny_model(tmp_path / "tiny.safetensors", seed=0)
    (tmp_path / "killer.py").write_text(KILLER)
    points = 0
    for kill_at in range(1, 30):
        work = tmp_path / f"run{kill_at}"
        work.mkdir()
        run = subprocess.run([sys.executable, str(tmp_path / "killer.py"), "index", str(tmp_path / "p"), "--model",
                              str(model_file), "--batch-size", "2", "--workers", "0"], cwd=work, capture_output=True,
                             text=True, env={**os.environ, "PYTHONPATH": str(REPO), "KILL_AT": str(kill_at)},
                             timeout=300)
        if run.returncode == 0:
            break
        assert run.returncode == -9, run.stderr
        points += 1
        root = work / ".simsearch"
        if not (root / "index.db").exists():
            continue
        index = open_index(root)
        committed = rows(index)
        if committed:
            assert answers_itself(index, index.load_model(), committed), f"killed at point {kill_at}"
        finish = index_paths(open_index(root), [tmp_path / "p"], None, FAST)
        assert finish.failed == 0
        done = open_index(root)
        assert sorted(rows(done)) == sorted(str(p) for p in photos), f"one row per file after the kill at {kill_at}"
        assert answers_itself(done, done.load_model(), [str(p) for p in photos])
        assert not list(root.rglob("*.tmp")), "orphaned temporaries are cleaned"
    assert points >= 6, "the run has a commit or file write per batch, and a kill landed at each"


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs (a real full disk) where the tests run as root; skipped elsewhere."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path, leave: int) -> Path:
    """Fill the file system of `folder` but for `leave` bytes."""
    filler = folder / "filler"
    free = shutil.disk_usage(folder).free
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(0, free - leave))
    return filler


def test_a_full_disk_while_indexing_is_a_one_line_error_and_keeps_what_was_committed(
        tmp_path: Path, full_disk: Path, make_photos) -> None:  # type: ignore[no-untyped-def]
    make_photos(tmp_path / "first", 4)
    photos = make_photos(tmp_path / "second", 300, start=4)
    model_file = save_tiny_model(tmp_path / "tiny.safetensors", seed=0)
    root = full_disk / "index"
    first = simsearch("index", str(tmp_path / "first"), "--index", str(root), "--model", str(model_file),
                      "--workers", "0", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    filler = fill(full_disk, leave=48_000)
    full = simsearch("index", str(tmp_path / "second"), "--index", str(root), "--batch-size", "4", "--workers", "0",
                     cwd=tmp_path)
    assert_one_line_error(full, "full")
    filler.unlink()
    index = open_index(root)
    committed = rows(index)
    assert 4 <= len(committed) < 304
    assert answers_itself(index, index.load_model(), committed)
    again = simsearch("index", str(tmp_path / "second"), "--index", str(root), "--workers", "0", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(set(rows(open_index(root)))) == len(rows(open_index(root))) == 304
    assert str(photos[-1]) in rows(open_index(root))


def test_a_database_that_cannot_grow_is_an_index_write_error(tmp_path: Path, tiny: EmbeddingModel,
                                                            make_photos) -> None:  # type: ignore[no-untyped-def]
    """The same fault injected as SQLite's own SQLITE_FULL (no root needed): the pages run out mid-run."""
    make_photos(tmp_path / "first", 2)
    make_photos(tmp_path / "second", 200, start=2)
    root = tmp_path / "idx"
    index_paths(create_index(root), [tmp_path / "first"], tiny, FAST)
    index = open_index(root)
    index.engine.dispose()
    pages = sqlite3.connect(root / "index.db").execute("PRAGMA page_count").fetchone()[0]

    @event.listens_for(index.engine, "connect")
    def _cap(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages + 4}")

    with pytest.raises(IndexWriteError, match="full.*what was committed before is kept"):
        index_paths(index, [tmp_path / "second"], tiny, FAST)
    reopened = open_index(root)
    committed = rows(reopened)
    assert 2 <= len(committed) < 202
    assert answers_itself(reopened, tiny, committed)
    index_paths(reopened, [tmp_path / "second"], tiny, FAST)
    with open_index(root).store.reading() as session:
        assert session.scalar(select(func.count()).select_from(ImageRecord)) == 202


def test_a_bad_device_is_a_one_line_error_and_leaves_no_index(tmp_path: Path, make_photos) -> None:  # type: ignore[no-untyped-def]
    import torch

    make_photos(tmp_path / "p", 2)
    assert_one_line_error(simsearch("index", "p", "--device", "bogus", cwd=tmp_path), "unknown device 'bogus'")
    assert not (tmp_path / ".simsearch").exists()
    if not torch.cuda.is_available():
        assert_one_line_error(simsearch("index", "p", "--device", "cuda", cwd=tmp_path), "CUDA is not available")
        assert not (tmp_path / ".simsearch").exists(), "the empty index the run created is removed"


def test_index_db_alone_holds_every_row_after_a_clean_run(tmp_path: Path, make_photos) -> None:  # type: ignore[no-untyped-def]
    """The CLI leaves without the interpreter's teardown: the rows must not stay in index.db-wal."""
    make_photos(tmp_path / "p", 3)
    model_file = save_tiny_model(tmp_path / "tiny.safetensors", seed=0)
    result = simsearch("index", "p", "--model", str(model_file), "--workers", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    backup = tmp_path / "backup.db"
    shutil.copyfile(tmp_path / ".simsearch" / "index.db", backup)  # the database file alone, no -wal beside it
    assert sqlite3.connect(backup).execute("SELECT count(*) FROM images").fetchone()[0] == 3


def test_damaged_files_of_the_index_directory(tmp_path: Path, make_photos) -> None:  # type: ignore[no-untyped-def]
    """Each file the index directory holds, damaged: a one-line error where the index cannot serve, a rebuild
    where the file is a cache."""
    photos = make_photos(tmp_path / "p", 3)
    model_file = save_tiny_model(tmp_path / "tiny.safetensors", seed=0)
    assert simsearch("index", "p", "--model", str(model_file), "--workers", "0", cwd=tmp_path).returncode == 0
    root = tmp_path / ".simsearch"
    query = ("query", str(photos[0]), "-k", "1", "--json")

    [vector_file] = root.glob("vectors-*.faiss")
    vector_file.write_bytes(b"\0" * 10)
    answer = simsearch(*query, cwd=tmp_path)
    assert answer.returncode == 0 and json.loads(answer.stdout)[0]["neighbours"][0]["path"] == str(photos[0])

    [stored_model] = (root / "models").glob("*.safetensors")
    good = stored_model.read_bytes()
    for damage in (lambda: stored_model.write_bytes(good[: len(good) // 3]), stored_model.unlink):
        damage()  # models/ is a cache of the database's model files
        answer = simsearch(*query, cwd=tmp_path)
        assert answer.returncode == 0 and json.loads(answer.stdout)[0]["neighbours"][0]["path"] == str(photos[0])
        assert stored_model.read_bytes() == good

    for journal in ("index.db-wal", "index.db-shm"):  # left by a crash on another machine, say, or damaged
        (root / journal).write_bytes(random.Random(journal).randbytes(5000))
        answer = simsearch(*query, cwd=tmp_path)
        assert answer.returncode == 0 and json.loads(answer.stdout)[0]["neighbours"][0]["path"] == str(photos[0])

    (root / "lock").write_bytes(b"garbage")
    assert simsearch("index", "p", cwd=tmp_path).returncode == 0

    database = (root / "index.db").read_bytes()
    (root / "index.db").write_bytes(database[:4096])
    assert_one_line_error(simsearch(*query, cwd=tmp_path), "index database")
    assert_one_line_error(simsearch("index", "p", cwd=tmp_path), "index database")
