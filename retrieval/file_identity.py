"""What makes a file the same file: its device and inode, not its path.

Several paths can reach one file: a folder reached through a symbolic link, a linked file, hard links. Such a
path is an alias of the file, never a second image: indexing keeps one path per file, and dedup never proposes
a path whose file is kept under another.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass


def file_id(info: os.stat_result) -> str:
    """The identity of the file `info` describes: `device:inode`."""
    return f"{info.st_dev}:{info.st_ino}"


@dataclass(frozen=True)
class FileIdentity:
    """What a path reaches now."""

    file_id: str
    via_link: bool
    """Whether the path passes through a symbolic link (to the file, or to a folder above it)."""


def identify_file(path: str) -> FileIdentity | None:
    """The regular file at `path` now, or None when there is none (deleted, replaced by a folder, ...)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    absolute = os.path.abspath(path)
    return FileIdentity(file_id(info), os.path.realpath(absolute) != absolute)
