"""What an embeddings file must hold before `simsearch import` writes any of it: the rules for its model tag and
its rows.

An import file is input from anywhere (another machine, a distributed job, a download), and its rows name files
on this machine: dedup proposes files for deletion by them, and a content hash becomes a file name. So each row
must name one file the way `simsearch index` would (an absolute, normalised path), say what that file was (a
size and a modification time, non-negative integers) and carry a content hash that is one (`is_content_hash`);
no path may come twice. The first row that breaks a rule is an `InputPathError` naming its file, row and field.

What a row cannot prove is that the file at its path is the one it describes: an imported row has no device and
inode, and `FileIdentity.is_as_indexed` takes it for its file only once `simsearch index` has seen that file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from retrieval.errors import InputPathError
from retrieval.sources.content_hash import is_content_hash
from retrieval.sources.images import is_integer, shown_value

REQUIRED_COLUMNS = ("path", "size", "mtime_ns", "content_hash")


@dataclass(frozen=True)
class ModelTag:
    """The model an embeddings file says made its vectors."""

    model_hash: str
    model_name: str
    dim: int


def model_tag(raw: bytes, where: Path) -> ModelTag:
    """The model tag `raw` (JSON) of the file `where`; `InputPathError` unless it is an object with a model hash,
    a name (if any) that is text, and a positive dimension."""
    try:
        tag = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputPathError(f"{where}: its simsearch model tag is not JSON") from exc
    if not isinstance(tag, dict):
        raise InputPathError(f"{where}: its simsearch model tag is not a JSON object (got {shown_value(tag)})")
    if not is_content_hash(tag.get("model_hash")):
        raise InputPathError(f"{where}: its simsearch model tag has no model hash of 64 lower-case hex digits (got "
                             f"{shown_value(tag.get('model_hash'))})")
    name = tag.get("model_name", "")
    if not isinstance(name, str):
        raise InputPathError(f"{where}: its simsearch model tag has a model name that is not text")
    dim = tag.get("dim")
    if not is_integer(dim) or dim <= 0:
        raise InputPathError(f"{where}: its simsearch model tag has no dimension (got {shown_value(dim)})")
    return ModelTag(tag["model_hash"], name, dim)


def check_columns(columns: Iterable[str], where: Path) -> None:
    """`InputPathError` for a file without one of `REQUIRED_COLUMNS`."""
    present = set(columns)
    missing = [column for column in REQUIRED_COLUMNS if column not in present]
    if missing:
        raise InputPathError(f"{where}: no {missing[0]} column")


def is_normal_absolute(path: str) -> bool:
    """Whether `path` is as `simsearch index` stores one: absolute and normalised (no empty, `.` or `..` part, so
    nothing to resolve against a working directory or to climb out of a folder by), without a NUL byte."""
    parts = path.split("/")
    return len(parts) > 1 and parts[0] == "" and "\0" not in path and \
        all(part not in ("", ".", "..") for part in parts[1:])


def _problem(row: dict[str, object]) -> tuple[str, str] | None:
    """The first field of `row` that breaks a rule, and the rule; None for a good row."""
    path = row.get("path")
    if not isinstance(path, str) or not is_normal_absolute(path):
        return "path", "must be absolute and normalised (no `.`, `..` or empty part, no NUL byte)"
    for field in ("size", "mtime_ns"):
        value = row.get(field)
        if not is_integer(value) or value < 0:  # type: ignore[operator]
            return field, "must be a non-negative integer"
    if not is_content_hash(row.get("content_hash")):
        return "content_hash", "must be 64 lower-case hex digits"
    for field in ("width", "height"):
        value = row.get(field)
        if value is not None and (not is_integer(value) or value < 0):  # type: ignore[operator]
            return field, "must be a non-negative integer, or empty"
    if row.get("label") is not None and not isinstance(row.get("label"), str):
        return "label", "must be text, or empty"
    return None


class RowChecker:
    """Checks rows as they are read, file by file and batch by batch, remembering every path it has passed so that
    none comes twice among them all (the paths are all it keeps)."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[Path, int]] = {}

    def check(self, where: Path, rows: Sequence[dict[str, object]], first_number: int = 1) -> None:
        """Each of `rows` (the file `where`'s, numbered from `first_number`: rows count from 1 in each file)
        follows the rules, and its path is none seen before; else `InputPathError` naming the first that does
        not."""
        for number, row in enumerate(rows, first_number):
            problem = _problem(row)
            if problem is not None:
                field, rule = problem
                raise InputPathError(f"{where}: row {number}: {field} {rule} (got {shown_value(row.get(field))})")
            path = str(row["path"])
            if path in self._seen:
                first, first_number_seen = self._seen[path]
                raise InputPathError(f"{where}: row {number}: path {shown_value(path)} comes twice (first in "
                                     f"{first}, row {first_number_seen})")
            self._seen[path] = (where, number)
