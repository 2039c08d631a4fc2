"""File names as a user's disk holds them (control characters, escape sequences, quotes, unicode, bytes that are
not UTF-8) in everything the command line prints: JSON and CSV stay valid UTF-8, the terminal never gets a raw
control character, `--print0` gives back the exact bytes."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli.output import terminal_text, valid_text, write_paths0
from conftest import invoke, photo

CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
"""Control characters (C0, DEL, C1), line and paragraph separators, and the surrogates of undecodable bytes."""
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
"""What must never reach a terminal raw in an output: `CONTROL`, less the newline that ends each line."""

DETERMINISTIC = settings(derandomize=True, database=None)
"""The same examples on every run, and nothing written to .hypothesis/."""

TRICKY_PIECES = [b"\x1b[31m", b"\x1b]0;title\x07", b"\x1b[2J", b"\n", b"\r", b"\t", b" ", b"'", b'"', b"\\",
                 b"\x7f", "\x9b".encode(), "\u2028".encode(), b"[bold]", b":cat:", b"\xff", b"\xc3", b"\xed\xa0\x80"]

name_pieces = st.one_of(
    st.sampled_from(TRICKY_PIECES),
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="/\0"), min_size=1, max_size=4)
    .map(str.encode),
    st.binary(min_size=1, max_size=3).filter(lambda b: b"/" not in b and b"\0" not in b),
)
file_names = st.lists(name_pieces, min_size=1, max_size=5).map(lambda pieces: b"img" + b"".join(pieces) + b".png")
"""Byte names of visible (no leading dot) image files, often not valid UTF-8."""


def is_utf8(name: bytes) -> bool:
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def save_photo(path: bytes, seed: int) -> None:
    buffer = io.BytesIO()
    photo(seed).save(buffer, format="PNG")
    with open(path, "wb") as file:
        file.write(buffer.getvalue())


def parsed_json(stdout: bytes) -> object:
    """The JSON of `stdout`, which must be valid UTF-8 (strict decoding) and never drive a terminal."""
    text = stdout.decode("utf-8")
    assert not RAW_CONTROL.search(text), text
    return json.loads(text)


# --- the rules themselves ----------------------------------------------------------------------------------------

@DETERMINISTIC
@given(st.binary(max_size=40))
def test_undecodable_bytes_read_as_backslash_x(name: bytes) -> None:
    """What Python's argv and os.listdir make of a name, shown: each byte that is not UTF-8 as `\\xNN`."""
    shown = valid_text(os.fsdecode(name))
    assert shown == name.decode("utf-8", "backslashreplace")
    shown.encode("utf-8")


@DETERMINISTIC
@given(st.binary(max_size=40))
def test_terminal_text_has_no_control_characters_and_changes_nothing_else(name: bytes) -> None:
    text = os.fsdecode(name)
    shown = terminal_text(text)
    assert not CONTROL.search(shown)
    if not CONTROL.search(text):
        assert shown == text, "an ordinary name is shown as it is"


def test_terminal_text_escapes_visibly() -> None:
    assert terminal_text("a\x1b[31mred\n\t.png") == "a\\x1b[31mred\\n\\t.png"
    assert terminal_text("\x9b\u2028é" + os.fsdecode(b"\xff")) == "\\x9b\\u2028é\\xff"


@DETERMINISTIC
@given(st.lists(st.binary(min_size=1, max_size=20).filter(lambda b: b"\0" not in b), max_size=4))
def test_print0_writes_the_exact_bytes(names: list[bytes]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        captured = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
        patch.setattr("sys.stdout", captured)
        write_paths0(os.fsdecode(name) for name in names)
        assert captured.buffer.getvalue() == b"".join(name + b"\0" for name in names)


# --- through the command line ------------------------------------------------------------------------------------

@settings(DETERMINISTIC, max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(file_names, min_size=1, max_size=3, unique=True))
def test_index_and_query_any_file_names(tiny_model_file: Path, names: list[bytes]) -> None:
    """Valid UTF-8 names are indexed and found under their own name; a name that is not UTF-8 may be refused by
    the indexer, but queries like any other. Either way the JSON parses and no table holds a raw control
    character."""
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        folder = os.fsencode(root / "p")
        os.mkdir(folder)
        save_photo(os.path.join(folder, b"plain.png"), seed=100)
        files = [os.path.join(folder, name) for name in names]
        for seed, file in enumerate(files):
            save_photo(file, seed)
        indexed = invoke("index", "p", "--model", str(tiny_model_file), "--workers", "0", cwd=root)
        assert indexed.exit_code == 0 if all(map(is_utf8, names)) else indexed.exit_code in (0, 1), indexed.output
        assert not RAW_CONTROL.search(indexed.output), indexed.output

        queries = [os.fsdecode(file) for file in files]
        answered = invoke("query", *queries, "-k", "1", "--json", cwd=root)
        assert answered.exit_code == 0, answered.output
        results = parsed_json(answered.stdout_bytes)
        assert [r["query"] for r in results] == [valid_text(q) for q in queries]
        for name, query, result in zip(names, queries, results):
            assert len(result["neighbours"]) == 1
            if is_utf8(name):
                assert result["neighbours"][0]["path"] == query, "found under its own name"

        table = invoke("query", *queries, "-k", "1", cwd=root)
        assert table.exit_code == 0, table.output
        assert not RAW_CONTROL.search(table.stdout) and not RAW_CONTROL.search(table.stderr), table.output


@pytest.fixture
def tricky(tmp_path: Path, tiny_model_file: Path) -> Path:
    """An index of two photos, one named with an escape sequence; beside it a copy under a name that is not
    UTF-8 and a duplicate whose name holds a newline."""
    (tmp_path / "p").mkdir()
    photo(0).save(tmp_path / "p" / "a\x1b[31mred.png")
    photo(1).save(tmp_path / "p" / "plain.png")
    result = invoke("index", "p", "--model", str(tiny_model_file), "--workers", "0", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    (tmp_path / "q").mkdir()
    shutil.copy(tmp_path / "p" / "plain.png", os.path.join(os.fsencode(tmp_path / "q"), b"\xff-copy.png"))
    return tmp_path


def test_tables_and_errors_show_names_escaped(tricky: Path) -> None:
    table = invoke("query", "p/plain.png", "-k", "2", cwd=tricky)
    assert table.exit_code == 0, table.output
    assert "p/a\\x1b[31mred.png" in table.stdout and "\x1b" not in table.stdout

    missing = invoke("query", "new\nline.png", "new\x1b[2Jscreen.png", cwd=tricky)
    assert missing.exit_code == 2
    assert missing.stderr.splitlines() == ["error: new\\nline.png: no such file",
                                           "error: new\\x1b[2Jscreen.png: no such file"]

    for label, seed in (("red\x1b[0m", 0), ("plain", 1)):
        (tricky / "support" / label).mkdir(parents=True)
        photo(seed).save(tricky / "support" / label / "1.png")
    classified = invoke("classify", "--support", "support", "p/a\x1b[31mred.png", cwd=tricky)
    assert classified.exit_code == 0, classified.output
    assert "p/a\\x1b[31mred.png" in classified.stdout and "red\\x1b[0m" in classified.stdout
    assert not RAW_CONTROL.search(classified.stdout)

    (tricky / "p" / ":cat: [bold]x\x07.png").write_bytes(b"not an image")
    warned = invoke("index", "p", cwd=tricky)
    assert warned.exit_code == 1
    assert "warning: " in warned.stderr and ":cat: [bold]x\\x07.png" in warned.stderr
    assert not RAW_CONTROL.search(warned.stderr)


def test_json_of_every_command_is_utf8_for_a_name_that_is_not(tricky: Path) -> None:
    undecodable = os.fsdecode(os.path.join(os.fsencode(tricky / "q"), b"\xff-copy.png"))
    shown = valid_text(undecodable)
    assert shown.endswith("q/\\xff-copy.png")

    queried = invoke("query", undecodable, "-k", "1", "--json", cwd=tricky)
    assert queried.exit_code == 0, queried.output
    (result,) = parsed_json(queried.stdout_bytes)  # type: ignore[misc]
    assert result["query"] == shown and result["neighbours"][0]["path"] == str(tricky / "p" / "plain.png")

    verified = invoke("verify", undecodable, "p/plain.png", "--threshold", "0.01", "--json", cwd=tricky)
    assert verified.exit_code == 0, verified.output
    assert parsed_json(verified.stdout_bytes)["a"] == shown  # type: ignore[index]

    (tricky / "support" / "plain").mkdir(parents=True)
    shutil.copy(tricky / "p" / "plain.png", tricky / "support" / "plain" / "1.png")
    (tricky / "support" / "red").mkdir()
    shutil.copy(tricky / "p" / "a\x1b[31mred.png", tricky / "support" / "red" / "1.png")
    classified = invoke("classify", "--support", "support", undecodable, "--json", cwd=tricky)
    assert classified.exit_code == 0, classified.output
    assert parsed_json(classified.stdout_bytes)[0]["query"] == shown  # type: ignore[index]

    streamed = invoke("dedup", "--stdin", "--threshold", "0.000001", cwd=tricky,
                      input=b"q/\xff-copy.png\n")  # type: ignore[arg-type]
    assert streamed.exit_code == 0, streamed.output
    record = parsed_json(streamed.stdout_bytes)
    assert record == {"path": "q/\\xff-copy.png", "duplicate_of": str(tricky / "p" / "plain.png"),
                      "distance": record["distance"], "similarity": record["similarity"],  # type: ignore[index]
                      "pixels": record["pixels"]}  # type: ignore[index]  # tiny images: judged on pixels too


def test_dedup_print0_csv_and_json_round_trip_a_name_with_a_newline(tricky: Path) -> None:
    copy = tricky / "p" / "plain\ncopy 'x' \x1b[0m.png"
    shutil.copy(tricky / "p" / "plain.png", copy)
    assert invoke("index", "p", cwd=tricky).exit_code == 0

    listed = invoke("dedup", "--threshold", "0.000001", "--print0", cwd=tricky)
    assert listed.exit_code == 0, listed.output
    assert listed.stdout_bytes == os.fsencode(copy) + b"\0", "the newer copy, as its exact bytes"

    groups = parsed_json(invoke("dedup", "--threshold", "0.000001", "--json", cwd=tricky).stdout_bytes)
    (group,) = groups  # type: ignore[misc]
    assert {group["keeper"]["path"], group["duplicates"][0]["path"]} == {str(copy), str(tricky / "p" / "plain.png")}

    rows = list(csv.DictReader(io.StringIO(
        invoke("dedup", "--threshold", "0.000001", "--csv", cwd=tricky).stdout_bytes.decode("utf-8"))))
    assert {row["path"] for row in rows} == {str(copy), str(tricky / "p" / "plain.png")}

    shown = invoke("dedup", "--threshold", "0.000001", cwd=tricky, env={"COLUMNS": "120"})  # room for the path
    assert "plain\\ncopy 'x' \\x1b[0m.png" in shown.stdout and not RAW_CONTROL.search(shown.stdout)
