"""An index in PostgreSQL, as a team runs it: `--db URL` on the commands, writers side by side, what goes wrong."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import psycopg
from sqlalchemy.engine import make_url

from conftest import REPO, assert_one_line_error, invoke
from postgres_server import PostgresServer
from postgres_server import missing_reason as postgres_missing_reason
from retrieval.errors import IndexUnavailableError
from retrieval.index import create_index, open_index


def plain_dsn(url: str) -> str:
    parsed = make_url(url)
    return (f"host={parsed.host} port={parsed.port} user={parsed.username} password={parsed.password} "
            f"dbname={parsed.database}")


def test_index_and_query_with_db_answer_as_sqlite_does(tmp_path: Path, tiny_model_file: Path, make_photos,  # type: ignore[no-untyped-def]
                                                       postgres_url: str) -> None:
    photos = make_photos(tmp_path / "p", 6)
    model = ["--model", str(tiny_model_file), "--workers", "0"]
    assert invoke("index", "p", "--index", "lite", *model, cwd=tmp_path).exit_code == 0
    result = invoke("index", "p", "--index", "team", "--db", postgres_url, *model, cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "team" / "index.db").exists(), "the rows are in PostgreSQL"
    answers = []
    for index_dir, env in (("lite", None), ("team", {"SIMSEARCH_DB": postgres_url})):
        queried = invoke("query", str(photos[2]), "--index", index_dir, "--json", cwd=tmp_path, env=env)
        assert queried.exit_code == 0, queried.output
        answers.append([(n["path"], n["distance"]) for n in json.loads(queried.stdout)[0]["neighbours"]])
    assert answers[0] == answers[1] and answers[0][0][0] == str(photos[2])
    again = invoke("index", "p", "--index", "team", "--db", postgres_url, *model, cwd=tmp_path)
    assert "skipped 6 unchanged" in again.output


def test_db_copy_moves_an_index_to_postgresql_and_back_answering_the_same(
        tmp_path: Path, tiny_model_file: Path, make_photos, postgres_url: str) -> None:  # type: ignore[no-untyped-def]
    photos = make_photos(tmp_path / "p", 8)
    assert invoke("index", "p", "--model", str(tiny_model_file), "--workers", "0", cwd=tmp_path).exit_code == 0

    def answers(*db: str) -> list[list[tuple[str, float, int]]]:
        result = invoke("query", *map(str, photos), "-k", "3", "--json", *db, cwd=tmp_path)
        assert result.exit_code == 0, result.output
        return [[(n["path"], n["distance"], n["image_id"]) for n in r["neighbours"]] for r in json.loads(result.stdout)]

    before = answers()
    copied = invoke("db", "copy", "--to", postgres_url, cwd=tmp_path)
    assert copied.exit_code == 0, copied.output
    assert "copied 8 images, 8 vectors, 1 model" in copied.output and "simsearch-test" not in copied.output
    assert answers("--db", postgres_url) == before
    back = f"sqlite:///{tmp_path / 'back.db'}"
    assert invoke("db", "copy", "--db", postgres_url, "--to", back, cwd=tmp_path).exit_code == 0
    assert answers("--db", back) == before
    assert_one_line_error(invoke("db", "copy", "--to", postgres_url, cwd=tmp_path), "already holds an index")
    assert_one_line_error(invoke("db", "copy", "--db", back, "--to", back, cwd=tmp_path), "the index is in already")


def test_writers_share_postgresql_and_an_exclusive_one_waits_for_none(tmp_path: Path, postgres_url: str) -> None:
    """(On SQLite a second writer process is refused: `test_pipeline`.)"""
    first, second = create_index(tmp_path / "a", postgres_url), create_index(tmp_path / "b", postgres_url)
    with first.store.writer(), second.store.writer():
        with pytest.raises(IndexUnavailableError, match="another simsearch process is writing"):
            with create_index(tmp_path / "c", postgres_url).store.writer(exclusive=True):
                pass
    with create_index(tmp_path / "c", postgres_url).store.writer(exclusive=True):
        pass  # once they are done, an exclusive writer (a re-embed) gets in


def test_two_indexers_on_different_folders_at_once_both_finish_without_duplicates(
        tmp_path: Path, tiny_model_file: Path, make_photos, postgres_url: str) -> None:  # type: ignore[no-untyped-def]
    make_photos(tmp_path / "a", 30)
    make_photos(tmp_path / "b", 30, start=20)  # ten photos have the same content in both folders
    command = [sys.executable, "-m", "cli", "index", "--index", str(tmp_path / "idx"), "--db", postgres_url,
               "--model", str(tiny_model_file), "--workers", "0", "--batch-size", "2"]
    runs = [subprocess.Popen([*command, str(tmp_path / folder)], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for folder in ("a", "b")]
    outputs = [process.communicate(timeout=300) for process in runs]
    assert [process.returncode for process in runs] == [0, 0], outputs
    with psycopg.connect(plain_dsn(postgres_url)) as conn:
        images = conn.execute("SELECT count(*), count(DISTINCT path) FROM images WHERE status = 'ok'").fetchone()
        vectors = conn.execute("SELECT count(*), count(DISTINCT content_hash) FROM vectors").fetchone()
        models = conn.execute("SELECT count(*) FROM models").fetchone()
    assert images == (60, 60)
    assert vectors == (50, 50), "one vector per content, however the two runs interleaved"
    assert models == (1,)
    assert len(open_index(tmp_path / "idx", postgres_url).vector_index()) == 50


@pytest.mark.parametrize("db, message", [
    ("not a url", "not a database URL"),
    ("mysql://u@h/simsearch", "SQLite or PostgreSQL, not mysql"),
    ("postgresql+psycopg://u@127.0.0.1", "names no database"),
])
def test_a_db_url_that_cannot_work_is_one_line_and_writes_nothing(tmp_path: Path, make_photos, db: str,  # type: ignore[no-untyped-def]
                                                                  message: str) -> None:
    make_photos(tmp_path / "p", 2)
    for command in (["index", "p"], ["query", "p/img0000.png"]):
        assert_one_line_error(invoke(*command, "--index", "idx", "--db", db, cwd=tmp_path), message)
    assert not (tmp_path / "idx").exists()


def test_a_server_that_is_down_or_refuses_the_password_is_one_line(tmp_path: Path, make_photos,  # type: ignore[no-untyped-def]
                                                                    postgres_server: PostgresServer) -> None:
    make_photos(tmp_path / "p", 2)
    url = postgres_server.new_database()
    closed = postgres_server.url(make_url(url).database or "", port=1)
    wrong = postgres_server.url(make_url(url).database or "", password="wrong")
    assert_one_line_error(invoke("index", "p", "--index", "idx", "--db", closed, cwd=tmp_path), "cannot connect to")
    assert_one_line_error(invoke("index", "p", "--index", "idx", "--db", wrong, cwd=tmp_path),
                          "password authentication failed")
    assert "wrong" not in invoke("index", "p", "--index", "idx", "--db", wrong, cwd=tmp_path).output, \
        "the password is never shown"
    assert not (tmp_path / "idx").exists()


def test_a_schema_newer_than_the_code_is_refused(tmp_path: Path, tiny_model_file: Path, make_photos,  # type: ignore[no-untyped-def]
                                                 postgres_url: str) -> None:
    make_photos(tmp_path / "p", 2)
    assert invoke("index", "p", "--index", "idx", "--db", postgres_url, "--model", str(tiny_model_file),
                  "--workers", "0", cwd=tmp_path).exit_code == 0
    with psycopg.connect(plain_dsn(postgres_url)) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    for command in (["index", "p"], ["query", "p/img0000.png"]):
        assert_one_line_error(invoke(*command, "--index", "idx", "--db", postgres_url, cwd=tmp_path),
                              "newer than this simsearch knows")
    with psycopg.connect(plain_dsn(postgres_url)) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("9999",), "left as it was"


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    """A server of this test's own, which it may stop; durable, as a production server is (the session's skips
    fsync for speed)."""
    reason = postgres_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    server = PostgresServer(fsync=True)
    yield server
    server.stop()


def test_a_connection_lost_mid_run_keeps_what_was_committed_and_the_next_run_finishes(
        tmp_path: Path, tiny_model_file: Path, make_photos, own_server: PostgresServer,  # type: ignore[no-untyped-def]
        monkeypatch: pytest.MonkeyPatch) -> None:
    make_photos(tmp_path / "p", 12)
    url = own_server.new_database()
    command = ["index", "p", "--index", "idx", "--db", url, "--model", str(tiny_model_file), "--workers", "0",
               "--batch-size", "4"]

    class ServerDiesAfterFirstBatch:
        """The progress display, whose first embedded batch brings the server down."""

        def __init__(self, *_: object) -> None:
            self.stage = ""

        def __enter__(self) -> ServerDiesAfterFirstBatch:
            return self

        def __exit__(self, *_: object) -> None:
            pass

        def start(self, stage: str, total: int) -> None:
            self.stage = stage

        def warn(self, path: str, reason: str) -> None:
            pass

        def advance(self, count: int) -> None:
            if self.stage == "embedding":
                own_server.stop_only()
                self.stage = "down"

    import cli.progress

    with monkeypatch.context() as patch:
        patch.setattr(cli.progress, "RichReporter", ServerDiesAfterFirstBatch)
        assert_one_line_error(invoke(*command, cwd=tmp_path), "cannot")
    own_server.start_again()
    index = open_index(tmp_path / "idx", url)
    assert len(index.store.known_images([str(tmp_path / "p")], 0, False)) == 4, "the first batch was committed"
    again = invoke(*command, cwd=tmp_path)
    assert again.exit_code == 0, again.output
    assert "added 8" in again.output and "skipped 4 unchanged" in again.output
    assert len(open_index(tmp_path / "idx", url).vector_index()) == 12
