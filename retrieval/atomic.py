"""Atomic file writes: the one way simsearch writes a file that a reader, a crash or a full disk must not tear.

The content goes to a temporary file beside the target (``.NAME.PID-THREAD.tmp``: two threads writing one
target never share one), is flushed to disk, and is renamed over the target. A reader sees the old file or the
new one; a failure (a full disk, say) leaves the old file as it was and no temporary behind; a process killed
mid-write leaves a temporary that names its pid, which `remove_orphaned_temporaries` recognises once that process
is gone.

Only a regular file is ever replaced. A target that is anything else is refused before any byte is written: a
device node (renaming over it would replace `/dev/full` or `/dev/null` itself for a root user), a FIFO or a socket
(another program's endpoint; a FIFO's reader would get nothing), a directory, and a symbolic link, even one to a
regular file: replacing the link would cut it, and writing through it would write wherever it points, which in a
shared folder someone else chooses. Whoever wants the file at the end of a link names that file.

The temporary is made anew, exclusively: whatever already has its predictable name (a leftover, or a link planted
to make the write land elsewhere) is removed rather than written through.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from retrieval.errors import OutputWriteError

_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)(-\d+)?\.tmp$")
_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFLNK: "a symbolic link", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}


def temporary_path(path: Path) -> Path:
    """Where `atomic_write` writes before renaming to `path`."""
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_native_id()}.tmp")


def atomic_write(path: Path, write: Callable[[Path], object], what: str) -> None:
    """Write `path` by calling `write(temporary)`, then renaming it into place.

    Raises `OutputWriteError` ("cannot write the {what} {path}: ...") for a `path` that is not a regular file (before
    `write` is called; checked again before the rename) and for an OSError, after removing the temporary; the
    previous `path`, if any, is untouched. A failure to remove the temporary never hides the error that made it
    necessary (on a read-only file system even removing a file that was never made fails).
    """
    _refuse_unless_regular(path, what)
    temporary = temporary_path(path)
    try:
        _create_anew(temporary)
        write(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        _refuse_unless_regular(path, what)
        os.replace(temporary, path)
    except OSError as exc:
        raise OutputWriteError(f"cannot write the {what} {path}: {exc.strerror or exc}") from exc
    finally:
        try:
            os.unlink(temporary)
        except OSError:
            pass  # renamed into place, never made, or not removable here: nothing more to do


def _refuse_unless_regular(path: Path, what: str) -> None:
    """`OutputWriteError` when `path` exists as anything but a regular file (a link is not followed)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return  # nothing there, or nothing that can be looked at: the write itself reports what is wrong
    if not stat.S_ISREG(mode):
        hint = " (to replace the file it points to, name that file)" if stat.S_ISLNK(mode) else ""
        raise OutputWriteError(f"cannot write the {what} {path}: it is {_KINDS.get(stat.S_IFMT(mode), 'special')}, "
                               f"not a regular file{hint}")


def _create_anew(temporary: Path) -> None:
    """Make `temporary` an empty file of this process's own, removing whatever had the name before."""
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        os.unlink(temporary)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.close(descriptor)


def writable_folder(folder: Path) -> None:
    """Make `folder` (and its parents) where it is missing and check it can be written in, before any long work
    that will write there; `OutputWriteError` otherwise."""
    if folder.exists() and not folder.is_dir():
        raise OutputWriteError(f"not a folder: {folder}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputWriteError(f"cannot make the folder {folder}: {exc.strerror or exc}") from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputWriteError(f"cannot write in {folder}: permission denied")

def remove_orphaned_temporaries(folder: Path, targets: re.Pattern[str]) -> list[Path]:
    """Remove the temporaries in `folder` that `atomic_write` left for a file named as `targets` matches (whole),
    in processes that no longer run; returns them.

    A temporary of a live process (a writer at work beside us) is left alone, and so is any file of a name we
    do not write: an index directory given by `--index` may be a folder other programs use too.
    """
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or not targets.fullmatch(match["target"]) or _is_running(int(match["pid"])):
            continue
        try:
            entry.unlink()
        except OSError:
            continue
        removed.append(entry)
    return removed


def _is_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, owned by someone else
    return True
