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
    size: int | None = None
    mtime_ns: int | None = None

    def is_as_indexed(self, file_id: str | None, size: int | None, mtime_ns: int | None) -> bool:
        """Whether this is still the file that was indexed at its path: the same device and inode, size and
        modification time. A file replaced or rewritten since has other content than its stored vector says, so
        nothing may be decided about it (least of all that it is a duplicate).

        It fails closed: a field the row lacks is a mismatch, never a match. A row `simsearch import` brought has
        no device and inode (an import file carries none: another machine's would mean nothing here), and its
        path is no proof of its file: an import file can name any path, such as a file that was never an image.
        So it is not taken for the file at its path until `simsearch index` over that folder has seen the file
        and recorded its device and inode; until then dedup neither proposes it nor lets it keep."""
        pairs = ((file_id, self.file_id), (size, self.size), (mtime_ns, self.mtime_ns))
        return all(then is not None and then == now for then, now in pairs)


def identify_file(path: str) -> FileIdentity | None:
    """The regular file at `path` now, or None when there is none (deleted, replaced by a folder, a path no file
    can have: one with a NUL byte, from a database edited by hand)."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    absolute = os.path.abspath(path)
    return FileIdentity(file_id(info), os.path.realpath(absolute) != absolute, info.st_size, info.st_mtime_ns)


def something_at(path: str | os.PathLike[str]) -> bool:
    """Whether a path names anything now: a file, a folder, or a symbolic link, even one whose target is gone.
    The one rule for "is it there" wherever a path given, indexed or moved is checked; False, never an error, for
    a path no file can have (a NUL byte, a name too long).

    It is `lexists`, not `exists`, because of the dangling symbolic link: its name is taken, so a move must not
    overwrite it and an undo must not take its place for free, and a path given to index that is one is the
    scan's to report (a link whose file is gone) rather than "no such file or directory"."""
    return os.path.lexists(path)
