"""The index directory and the files simsearch writes, as an accident or another user leaves them (issue 22, items
10-12): the database deleted or replaced under a running `simsearch serve`, write targets that are not regular
files (a device node, a FIFO, a socket, a directory, a symbolic link, a link planted at the temporary's name), and
a read-only index directory (a restored backup: `index.db` and `models/`, no FAISS file yet)."""

from __future__ import annotations

import errno
import gc
import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from conftest import REPO, assert_one_line_error, invoke
from postgres_server import free_port
from retrieval.atomic import atomic_write, temporary_path
from retrieval.errors import OutputWriteError

httpx = pytest.importorskip("httpx", reason="the server's extra is not installed: pip install -e '.[server]'")

SERVER_START_SECONDS = 60
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
PAGE = {"X-Simsearch-Request": "1"}
"""What the server's own page sends with what a page of another site must not ask for (a thumbnail, say)."""


@pytest.fixture
def indexed(tmp_path: Path, tiny_model_file: Path, make_photos) -> list[Path]:  # type: ignore[no-untyped-def]
    """Four photos and an exact copy of the first, indexed in `idx`."""
    photos = make_photos(tmp_path / "p", 4)
    shutil.copy(photos[0], tmp_path / "p" / "copy.png")
    index_into(tmp_path, "p", "idx", tiny_model_file)
    return photos


def index_into(tmp_path: Path, folder: str, index: str, model: Path) -> None:
    """`simsearch index FOLDER --index INDEX`, leaving every row in `index.db` and its WAL empty, as the command
    does when it exits (run in this process, it leaves its connections open, and SQLite keeps their WAL)."""
    result = invoke("index", folder, "--index", index, "--model", str(model), "--workers", "0", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    gc.collect()
    with closing(sqlite3.connect(tmp_path / index / "index.db")) as db:
        assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0, "the checkpoint was not blocked"


@contextmanager
def serving(tmp_path: Path, index: str = "idx", prefix: list[str] | None = None
            ) -> Iterator[tuple[httpx.Client, Path]]:
    """`simsearch serve --index INDEX` in a process of its own (after `prefix`, a command that runs it), as a user
    starts it; a client of it, and the file its stderr goes to."""
    port = free_port()
    log = tmp_path / f"serve-{port}.err"
    with log.open("w") as stderr:
        process = subprocess.Popen([*(prefix or []), sys.executable, "-m", "cli", "serve", "--index", index,
                                    "--port", str(port)], cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL,
                                   stderr=stderr)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=PAGE) as client:
            deadline = time.monotonic() + SERVER_START_SECONDS
            while True:
                assert process.poll() is None, log.read_text()
                try:
                    if client.get("/api/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"the server did not start: {log.read_text()}"
                time.sleep(0.1)
            yield client, log
    finally:
        process.terminate()
        process.wait(30)


def query_path(client: httpx.Client, path: Path) -> httpx.Response:
    return client.post("/api/query", json={"path": str(path), "k": 1})


# --- 10: the database deleted or replaced under a running server ------------------------------------------------

def test_a_server_follows_its_database_deleted_made_anew_and_replaced(
        tmp_path: Path, indexed: list[Path], tiny_model_file: Path,
        make_photos) -> None:  # type: ignore[no-untyped-def]
    new = make_photos(tmp_path / "new", 3, start=40)
    other = make_photos(tmp_path / "other", 2, start=60)
    index_into(tmp_path, "other", "idx2", tiny_model_file)
    database = tmp_path / "idx" / "index.db"
    with serving(tmp_path) as (client, log):
        assert client.get("/api/ready").json()["images"] == 5
        assert query_path(client, indexed[1]).status_code == 200  # the FAISS index is now held in memory

        database.unlink()
        for answer in (client.get("/api/ready"), query_path(client, indexed[1]),
                       client.post("/api/keepers", json={"path": str(indexed[1])})):
            assert answer.status_code == 503, answer.text
            detail = answer.json()["detail"]
            assert str(database) in detail and "is gone" in detail and "\n" not in detail, detail
        assert not database.exists(), "neither a read nor a write makes an empty database there"

        index_into(tmp_path, "new", "idx", tiny_model_file)  # a new database at the same place
        ready = client.get("/api/ready")
        assert ready.status_code == 200 and ready.json()["images"] == 3, ready.text
        hit = query_path(client, new[2])
        assert hit.status_code == 200 and hit.json()["neighbours"][0]["path"] == str(new[2]), hit.text
        assert query_path(client, indexed[1]).status_code == 404, "the old rows are not served"

        # a restore, with no request between: another database copied beside it and renamed over it
        with closing(sqlite3.connect(tmp_path / "idx2" / "index.db")) as source, \
                closing(sqlite3.connect(tmp_path / "idx" / "restored.db")) as copy:
            source.backup(copy)
        os.replace(tmp_path / "idx" / "restored.db", database)
        ready = client.get("/api/ready")
        assert ready.status_code == 200 and ready.json()["images"] == 2, ready.text
        hit = query_path(client, other[1])
        assert hit.status_code == 200 and hit.json()["neighbours"][0]["path"] == str(other[1]), hit.text
        assert query_path(client, new[2]).status_code == 404
    assert "Traceback" not in log.read_text()


# --- 11: write targets that are not regular files -------------------------------------------------------------

def test_export_leaves_a_device_node_a_device_node(tmp_path: Path, indexed: list[Path]) -> None:
    node = tmp_path / "null"
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is
    except PermissionError:
        pytest.skip("making a device node needs root")
    result = invoke("export", str(node), "--index", "idx", cwd=tmp_path)
    assert_one_line_error(result, "a character device, not a regular file")
    assert stat.S_ISCHR(node.lstat().st_mode) and node.lstat().st_rdev == os.makedev(1, 3)
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".null")] == [], "no temporary left"


def test_export_refuses_a_fifo_without_waiting_for_a_reader(tmp_path: Path, indexed: list[Path]) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert_one_line_error(invoke("export", str(fifo), "--index", "idx", cwd=tmp_path), "a FIFO")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_export_refuses_a_symbolic_link_and_leaves_both_ends(tmp_path: Path, indexed: list[Path]) -> None:
    target = tmp_path / "kept.parquet"
    target.write_bytes(b"an earlier export")
    link = tmp_path / "latest.parquet"
    link.symlink_to(target)
    assert_one_line_error(invoke("export", str(link), "--index", "idx", cwd=tmp_path), "a symbolic link")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == b"an earlier export"
    assert invoke("export", str(target), "--index", "idx", cwd=tmp_path).exit_code == 0, "the file itself is written"
    assert target.read_bytes()[:4] == b"PAR1"


def _socket_at(path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.close()


def _folder_at(path: Path) -> None:
    path.mkdir()
    (path / "inside.txt").write_text("kept")


@pytest.mark.parametrize(("make", "kind"), [(_folder_at, "a directory"), (_socket_at, "a socket"),
                                            (os.mkfifo, "a FIFO")])
def test_atomic_write_refuses_what_is_no_regular_file_before_writing(tmp_path: Path, make: Callable[[Path], None],
                                                                     kind: str) -> None:
    target = tmp_path / "out.bin"
    make(target)
    before = target.lstat()
    written: list[Path] = []
    with pytest.raises(OutputWriteError, match=f"cannot write the test file {target}: it is {kind}, not a "
                                               "regular file"):
        atomic_write(target, written.append, "test file")
    assert written == [], "refused before the work"
    assert target.lstat().st_ino == before.st_ino and stat.S_IFMT(target.lstat().st_mode) == stat.S_IFMT(before.st_mode)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.bin"]


def test_a_link_planted_at_the_temporary_name_is_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "out.txt"
    temporary_path(target).symlink_to(victim)  # the temporary's name is predictable: .out.txt.<pid>.tmp
    atomic_write(target, lambda temporary: temporary.write_text("exported"), "test file")
    assert victim.read_text() == "precious"
    assert target.read_text() == "exported" and not target.is_symlink()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.txt", "victim.txt"]


def test_a_failed_clean_up_never_hides_the_real_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a read-only file system even removing a temporary that was never made fails (EROFS): the error the user
    needs is the write's."""
    def full(temporary: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def read_only(*_: object, **__: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "unlink", read_only)
    with pytest.raises(OutputWriteError, match="No space left on device"):
        atomic_write(tmp_path / "out.txt", full, "test file")


def test_a_link_planted_in_the_thumbnail_cache_is_neither_served_nor_written_through(tmp_path: Path,
                                                                                    indexed: list[Path]) -> None:
    from retrieval.index import open_index
    from server.thumbnails import FOLDER, SIZE, thumbnail

    secret = tmp_path / "secret.txt"
    secret.write_text("not for the web page")
    index = open_index(tmp_path / "idx")
    row = index.store.image_by_id(1)
    assert row is not None
    (tmp_path / "idx" / FOLDER).mkdir()
    planted = tmp_path / "idx" / FOLDER / f"{row.content_hash}-{SIZE}.jpg"
    planted.symlink_to(secret)
    assert thumbnail(index, 1)[:2] == b"\xff\xd8", "a JPEG made from the indexed photo"
    assert secret.read_text() == "not for the web page" and planted.is_symlink()


# --- 12: a read-only index directory ---------------------------------------------------------------------------

@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Callable[[Path], list[str]]]:
    """A command prefix that runs a command with a folder read-only: as root (whom file modes do not stop) in a
    mount namespace of its own where the folder is a read-only bind mount; as anyone else after chmod -R a-w."""
    changed: list[Path] = []
    if os.geteuid() == 0:
        if shutil.which("unshare") is None or subprocess.run(
                ["unshare", "-m", "sh", "-c", f"mount --bind {tmp_path} {tmp_path} && "
                                              f"mount -o remount,bind,ro {tmp_path}"],
                capture_output=True).returncode != 0:
            pytest.skip("no read-only bind mount here (unshare -m and mount need CAP_SYS_ADMIN)")

        def prefix(folder: Path) -> list[str]:
            return ["unshare", "-m", "sh", "-c",
                    'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"', "sh",
                    str(folder)]
    else:
        def prefix(folder: Path) -> list[str]:
            for path in [folder, *folder.rglob("*")]:
                path.chmod(path.stat().st_mode & ~0o222)
                changed.append(path)
            return []
    yield prefix
    for path in changed:
        path.chmod(path.stat().st_mode | 0o200)


def restored_backup(tmp_path: Path) -> Path:
    """`idx` as a backup restores it: `index.db` (in WAL mode, every row in it) and `models/`, no FAISS file yet."""
    restored = tmp_path / "restored"
    shutil.copytree(tmp_path / "idx" / "models", restored / "models")
    with closing(sqlite3.connect(tmp_path / "idx" / "index.db")) as source, \
            closing(sqlite3.connect(restored / "index.db")) as copy:
        source.backup(copy)
    assert sorted(path.name for path in restored.iterdir()) == ["index.db", "models"]
    return restored


def listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(path.relative_to(folder)), path.stat().st_mtime_ns) for path in folder.rglob("*"))


def test_query_info_and_dedup_answer_from_a_read_only_index(tmp_path: Path, indexed: list[Path],
                                                           read_only: Callable[[Path], list[str]]) -> None:
    restored = restored_backup(tmp_path)
    before = listing(restored)
    commands = {"query": f"query {indexed[1]} -k 2 --json", "info": "info --json",
                "dedup": "dedup --threshold 0.001 --json"}
    script = "; ".join(f"{sys.executable} -m cli {line} --index restored > {name}.out 2> {name}.err; "
                       f"echo $? > {name}.rc" for name, line in commands.items())
    subprocess.run([*read_only(restored), "sh", "-c", script], cwd=tmp_path, env=ENV, timeout=300, check=True)
    for name in commands:  # each built the FAISS index in memory, and said so once
        errors = (tmp_path / f"{name}.err").read_text()
        assert (tmp_path / f"{name}.rc").read_text().strip() == "0", errors
        [warning] = errors.splitlines()
        assert warning.startswith("warning: the vector cache is kept in memory") and warning.endswith(
            "Read-only file system"), errors
    [result] = json.loads((tmp_path / "query.out").read_text())
    assert [hit["path"] for hit in result["neighbours"]][0] == str(indexed[1])
    info = json.loads((tmp_path / "info.out").read_text())
    assert info["images"] == 5 and info["vectors"]["count"] == 4
    [group] = json.loads((tmp_path / "dedup.out").read_text())
    assert {group["keeper"]["path"], *(member["path"] for member in group["duplicates"])} == {
        str(indexed[0]), str(tmp_path / "p" / "copy.png")}
    assert listing(restored) == before, "nothing written in the index directory"


def test_a_server_on_a_read_only_index_serves_thumbnails_and_queries(tmp_path: Path, indexed: list[Path],
                                                                    read_only: Callable[[Path], list[str]]) -> None:
    restored = restored_backup(tmp_path)
    before = listing(restored)
    with serving(tmp_path, "restored", read_only(restored)) as (client, log):
        for _ in range(2):
            thumbnail = client.get("/api/thumbnail/1")
            assert thumbnail.status_code == 200, thumbnail.text
            assert thumbnail.headers["content-type"] == "image/jpeg" and thumbnail.content[:2] == b"\xff\xd8"
            hit = query_path(client, indexed[1])
            assert hit.status_code == 200 and hit.json()["neighbours"][0]["path"] == str(indexed[1]), hit.text
    lines = [line for line in log.read_text().splitlines() if not line.startswith("serving ")]
    assert "Traceback" not in log.read_text()
    assert len(lines) == 2, f"each cache said once: {lines}"
    assert any("thumbnails" in line for line in lines) and any("vector cache" in line for line in lines), lines
    assert listing(restored) == before
