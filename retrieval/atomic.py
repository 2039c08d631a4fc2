"""Atomic file writes: the one way simsearch writes a file that a reader, a crash or a full disk must not tear.

The content goes to a temporary file beside the target (``.NAME.PID.tmp``), is flushed to disk, and is renamed
over the target. A reader sees the old file or the new one; a failure (a full disk, say) leaves the old file as
it was and no temporary behind; a process killed mid-write leaves a temporary that names its pid, which
`remove_orphaned_temporaries` recognises once that process is gone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from retrieval.errors import OutputWriteError

_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.tmp$")


def temporary_path(path: Path) -> Path:
    """Where `atomic_write` writes before renaming to `path`."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write(path: Path, write: Callable[[Path], object], what: str) -> None:
    """Write `path` by calling `write(temporary)`, then renaming it into place.

    Raises `OutputWriteError` ("cannot write the {what} {path}: ...") for an OSError, after removing the
    temporary; the previous `path`, if any, is untouched.
    """
    temporary = temporary_path(path)
    try:
        write(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        raise OutputWriteError(f"cannot write the {what} {path}: {exc.strerror or exc}") from exc
    finally:
        temporary.unlink(missing_ok=True)


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
