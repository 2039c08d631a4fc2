"""Find the image files under the paths a user gives.

Symbolic links to directories are followed, once each: a link back to an ancestor (a loop) is
reported and not entered. Hidden entries (a leading dot, such as `.simsearch/`) are skipped.

A file is its device and inode, not its path: when several paths reach one file (a folder reached
through a symbolic link, a linked file, hard links, or overlapping paths such as `DIR DIR/sub`), one
of them is the file's path and the others are aliases, reported apart and never taken for a second
image. The path kept is one without a symbolic link in it where there is one, then the shortest.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.classes import class_of
from retrieval.errors import InputPathError
from retrieval.file_identity import file_id
from retrieval.images import IMAGE_SUFFIXES


@dataclass(frozen=True)
class ScannedFile:
    path: str
    size: int
    mtime_ns: int
    label: str | None
    """Its class (`retrieval.classes.class_of`) under the folder given to the scan; None for a file given itself or
    directly in that folder."""
    file_id: str
    """`device:inode`: the identity of the file, whatever path reaches it."""
    via_link: bool = False
    """Whether `path` passes through a symbolic link (to the file or to a folder above it)."""


@dataclass(frozen=True)
class ScanProblem:
    """A path that looked like an image but could not even be stat'ed, or a directory loop."""

    path: str
    reason: str
    is_file: bool
    recordable: bool = True
    """Whether the database can hold the path (a name that is not valid UTF-8 cannot be stored)."""


@dataclass(frozen=True)
class Alias:
    """A second path to a file found under another one."""

    path: str
    file_path: str


@dataclass
class ScanResult:
    roots: list[str]
    files: list[ScannedFile] = field(default_factory=list)
    problems: list[ScanProblem] = field(default_factory=list)
    aliases: list[Alias] = field(default_factory=list)


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def scan(paths: Iterable[Path]) -> ScanResult:
    """Every image file under `paths` (files or folders), sorted by path."""
    roots = list(dict.fromkeys(os.path.abspath(p) for p in paths))
    result = ScanResult(roots=roots)
    for root in roots:
        if not os.path.lexists(root):
            raise InputPathError(f"no such file or directory: {root}")
        via_link = os.path.realpath(root) != root
        if os.path.isdir(root):
            _walk(root, result, visited=set(), via_link=via_link, root=root)
        elif is_image_name(root):
            _add_file(root, result, via_link, label=None)
        else:
            raise InputPathError(f"not a folder or an image file: {root}")
    result.files, result.aliases = _one_path_per_file(result.files)
    return result


def _one_path_per_file(files: list[ScannedFile]) -> tuple[list[ScannedFile], list[Alias]]:
    """The files, one path each and sorted by path, and the other paths to them."""
    by_file: dict[str, list[ScannedFile]] = {}
    for file in files:
        by_file.setdefault(file.file_id, []).append(file)
    kept, aliases = [], []
    for paths in by_file.values():
        paths.sort(key=lambda f: (f.via_link, len(f.path), f.path))
        kept.append(paths[0])
        aliases += [Alias(other.path, paths[0].path) for other in paths[1:] if other.path != paths[0].path]
    kept.sort(key=lambda f: f.path)
    aliases.sort(key=lambda a: a.path)
    return kept, aliases


def _walk(directory: str, result: ScanResult, visited: set[tuple[int, int]], via_link: bool, root: str) -> None:
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
            is_link = entry.is_symlink()
        except OSError:
            is_dir = is_link = False
        if is_dir:
            _walk(entry.path, result, visited, via_link or is_link, root)
        elif is_image_name(entry.name):
            _add_file(entry.path, result, via_link or is_link, label=class_of(root, entry.path))


def _add_file(path: str, result: ScanResult, via_link: bool, label: str | None) -> None:
    if not _storable(path):
        result.problems.append(ScanProblem(path, "file name is not valid UTF-8 (cannot be indexed)", is_file=True,
                                           recordable=False))
        return
    try:
        file = stat_file(path, via_link, label)
    except OSError as exc:
        reason = "symbolic link loop" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
        result.problems.append(ScanProblem(path, reason, is_file=True))
        return
    if file is not None:
        result.files.append(file)


def stat_file(path: str, via_link: bool = False, label: str | None = None) -> ScannedFile | None:
    """The scan entry of one file (None when it is not a regular file); raises OSError."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        return None
    return ScannedFile(path=path, size=info.st_size, mtime_ns=info.st_mtime_ns, label=label, file_id=file_id(info),
                       via_link=via_link)


def _storable(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
