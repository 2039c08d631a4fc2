"""Find the image files under the paths a user gives.

Symbolic links to directories are followed, once each: a link back to an ancestor (a loop) is
reported and not entered. Hidden entries (a leading dot, such as `.simsearch/`) are skipped, and so
are index directories: the index's own (whatever its name), and any other holding an index's
database and models, reported. The other files found, those that are not images simsearch reads
(videos, sidecars, documents), are counted by extension for the summary, never skipped unsaid.

A file is its device and inode, not its path: when several paths reach one file (a folder reached
through a symbolic link, a linked file, hard links, or overlapping paths such as `DIR DIR/sub`), one
of them is the file's path and the others are aliases, reported apart and never taken for a second
image. The path kept is one without a symbolic link in it where there is one, then the shortest.

So is a folder: each is listed once, under its first path in that order, and another path to it is
an alias of that one, not entered again (a chain of folders each holding two links to the next has
2^depth paths, not 2^depth listings). The walk keeps its own heap of folders to visit, never the
interpreter's stack, whatever the depth.
"""

from __future__ import annotations

import errno
import heapq
import os
import stat
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.errors import InputPathError
from retrieval.index import is_index_directory
from retrieval.sources.classes import class_of
from retrieval.sources.file_identity import file_id, something_at
from retrieval.sources.images import IMAGE_SUFFIXES


@dataclass(frozen=True)
class ScannedFile:
    path: str
    size: int
    mtime_ns: int
    label: str | None
    """Its class (`retrieval.sources.classes.class_of`) under the folder given to the scan; None for a file given itself
    or directly in that folder."""
    file_id: str
    """`device:inode`: the identity of the file, whatever path reaches it."""
    via_link: bool = False
    """Whether `path` passes through a symbolic link (to the file or to a folder above it)."""


@dataclass(frozen=True)
class ScanProblem:
    """A path that looked like an image but could not even be stat'ed, a directory loop, or a folder left out."""

    path: str
    reason: str
    is_file: bool
    recordable: bool = True
    """Whether the database can hold the path (a name that is not valid UTF-8 cannot be stored)."""


@dataclass(frozen=True)
class Alias:
    """A second path to a file, or to a folder, found under another one."""

    path: str
    file_path: str
    """The path of the file (or folder) kept."""
    files: int = 1
    """The image files it is a second path to: 1 for a file; for a folder, those found under its kept path."""


@dataclass
class ScanResult:
    roots: list[str]
    files: list[ScannedFile] = field(default_factory=list)
    problems: list[ScanProblem] = field(default_factory=list)
    aliases: list[Alias] = field(default_factory=list)
    other_files: Counter[str] = field(default_factory=Counter)
    """The regular files found that are not images simsearch reads, by `extension_of` their names."""

    @property
    def alias_paths(self) -> int:
        """The other paths to image files found (through a folder alias, each file under it)."""
        return sum(alias.files for alias in self.aliases)


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


MAX_EXTENSION = 10


def extension_of(name: str) -> str:
    """The lowercase extension of a file name (".mov"), "" for none: one of more than `MAX_EXTENSION` characters or
    any but letters and digits (a byte that is not UTF-8 included) is part of a name ("notes 1.2 draft"), not a
    type."""
    extension = os.path.splitext(name)[1].lower()
    return extension if 1 < len(extension) <= MAX_EXTENSION and extension[1:].isalnum() else ""


def scan(paths: Iterable[Path], index_dir: Path | None = None) -> ScanResult:
    """Every image file under `paths` (files or folders), sorted by path; nothing under `index_dir`, the index's
    own directory (`InputPathError` for a path in it)."""
    roots = list(dict.fromkeys(os.path.abspath(p) for p in paths))
    result = ScanResult(roots=roots)
    walk = _Walk(result, _identity(index_dir))
    for order, root in enumerate(roots):
        if not something_at(root):
            raise InputPathError(f"no such file or directory: {root}")
        if index_dir is not None and _is_within(root, index_dir):
            raise InputPathError(f"{root} is in the index directory {index_dir}: an index never indexes itself")
        via_link = os.path.realpath(root) != root
        if os.path.isdir(root):
            walk.push(root, via_link, order)
        elif is_image_name(root):
            _add_file(root, result, via_link, label=None)
        else:
            raise InputPathError(f"not a folder or an image file: {root}")
    walk.run()
    result.files, file_aliases = _one_path_per_file(result.files)
    result.aliases = sorted(file_aliases + walk.folder_aliases(result.files), key=lambda a: a.path)
    return result


def _identity(path: Path | None) -> tuple[int, int] | None:
    """The device and inode of the folder at `path`, if there is one."""
    if path is None:
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _is_within(path: str, folder: Path) -> bool:
    real, inside = os.path.realpath(path), os.path.realpath(folder)
    return real == inside or real.startswith(inside.rstrip(os.sep) + os.sep)


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
    return kept, aliases


class _Walk:
    """The folders under the roots, each listed once, in the order of the path kept for it: one without a symbolic
    link first, then the shortest, then by name (then by the root it was found under, for its files' classes).

    A folder's path is longer than its parent's and passes through a link wherever the parent's does, so a heap in
    that order reaches every folder first through its kept path, whatever the links: a later path to it is a loop
    (the kept path is a prefix of it: a link to a folder above) or an alias."""

    def __init__(self, result: ScanResult, index_dir: tuple[int, int] | None) -> None:
        self._result = result
        self._index_dir = index_dir
        self._heap: list[tuple[bool, int, str, int]] = []
        self._kept: dict[tuple[int, int], str] = {}
        self._aliases: dict[str, str] = {}
        self._left_out: set[tuple[int, int]] = set()

    def push(self, path: str, via_link: bool, root: int) -> None:
        heapq.heappush(self._heap, (via_link, len(path), path, root))

    def run(self) -> None:
        while self._heap:
            via_link, _, path, root = heapq.heappop(self._heap)
            try:
                info = os.stat(path)
            except OSError as exc:
                self._result.problems.append(ScanProblem(path, exc.strerror or str(exc), is_file=False))
                continue
            key = (info.st_dev, info.st_ino)
            if key in self._left_out:
                continue
            kept = self._kept.get(key)
            if kept is not None:
                self._seen_again(path, kept)
                continue
            self._kept[key] = path
            if key == self._index_dir or is_index_directory(path):
                self._left_out.add(key)
                what = "the index directory" if key == self._index_dir else "another simsearch index directory"
                self._result.problems.append(ScanProblem(path, f"{what}: not indexed", is_file=False))
                continue
            self._list(path, via_link, root)

    def _seen_again(self, path: str, kept: str) -> None:
        if path == kept:
            return  # overlapping roots (`DIR DIR/sub`)
        if path.startswith(kept.rstrip(os.sep) + os.sep):
            self._result.problems.append(ScanProblem(path, "symbolic link loop, not followed", is_file=False))
        else:
            self._aliases[path] = kept

    def _list(self, directory: str, via_link: bool, root: int) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            self._result.problems.append(ScanProblem(directory, exc.strerror or str(exc), is_file=False))
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
                self.push(entry.path, via_link or is_link, root)
            elif is_image_name(entry.name):
                label = class_of(self._result.roots[root], entry.path)
                _add_file(entry.path, self._result, via_link or is_link, label)
            elif _is_file(entry):
                self._result.other_files[extension_of(entry.name)] += 1

    def folder_aliases(self, kept_files: list[ScannedFile]) -> list[Alias]:
        """The folders reached again, each with the count of `kept_files` (sorted by path) under its kept path."""
        paths = [file.path for file in kept_files]
        aliases = []
        for path, kept in self._aliases.items():
            prefix = kept.rstrip(os.sep) + os.sep
            under = bisect_left(paths, prefix[:-1] + chr(ord(os.sep) + 1)) - bisect_left(paths, prefix)
            aliases.append(Alias(path, kept, files=under))
        return aliases


def _is_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


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
