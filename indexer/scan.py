"""Find the image files under the paths a user gives.

Symbolic links to directories are followed, once each: a link back to an ancestor (a loop) is
reported and not entered. Hidden entries (a leading dot, such as `.simsearch/`) are skipped.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.errors import InputPathError
from retrieval.images import IMAGE_SUFFIXES


@dataclass(frozen=True)
class ScannedFile:
    path: str
    size: int
    mtime_ns: int
    label: str


@dataclass(frozen=True)
class ScanProblem:
    """A path that looked like an image but could not even be stat'ed, or a directory loop."""

    path: str
    reason: str
    is_file: bool


@dataclass
class ScanResult:
    roots: list[str]
    files: list[ScannedFile] = field(default_factory=list)
    problems: list[ScanProblem] = field(default_factory=list)


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def scan(paths: Iterable[Path]) -> ScanResult:
    """Every image file under `paths` (files or folders), sorted by path."""
    roots = [os.path.abspath(p) for p in paths]
    result = ScanResult(roots=roots)
    for root in roots:
        if not os.path.lexists(root):
            raise InputPathError(f"no such file or directory: {root}")
        if os.path.isdir(root):
            _walk(root, result, visited=set())
        elif is_image_name(root):
            _add_file(root, result)
        else:
            raise InputPathError(f"not a folder or an image file: {root}")
    result.files.sort(key=lambda f: f.path)
    return result


def _walk(directory: str, result: ScanResult, visited: set[tuple[int, int]]) -> None:
    try:
        info = os.stat(directory)
    except OSError as exc:
        result.problems.append(ScanProblem(directory, exc.strerror or str(exc), is_file=False))
        return
    key = (info.st_dev, info.st_ino)
    if key in visited:
        result.problems.append(ScanProblem(directory, "symbolic link loop, not followed", is_file=False))
        return
    visited = visited | {key}
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        result.problems.append(ScanProblem(directory, exc.strerror or str(exc), is_file=False))
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            _walk(entry.path, result, visited)
        elif is_image_name(entry.name):
            _add_file(entry.path, result)


def _add_file(path: str, result: ScanResult) -> None:
    try:
        file = stat_file(path)
    except OSError as exc:
        reason = "symbolic link loop" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
        result.problems.append(ScanProblem(path, reason, is_file=True))
        return
    if file is None:
        return
    if not _storable(path):
        result.problems.append(ScanProblem(path, "file name is not valid UTF-8", is_file=False))
        return
    result.files.append(file)


def stat_file(path: str) -> ScannedFile | None:
    """The scan entry of one file (None when it is not a regular file); raises OSError."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        return None
    label = os.path.basename(os.path.dirname(path))
    return ScannedFile(path=path, size=info.st_size, mtime_ns=info.st_mtime_ns, label=label)


def _storable(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
