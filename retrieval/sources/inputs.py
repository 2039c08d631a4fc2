"""Checks on what a caller hands the library: lists of paths, k, thresholds, and whether a path can be read.

Each wrong argument fails at once with a message that names it, not deep inside numpy or FAISS, and never by
doing something else: a single str given where a list of paths is expected would otherwise be queried one
character at a time.
"""

from __future__ import annotations

import math
import numbers
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from retrieval.errors import ArgumentTypeError, InvalidArgumentError


def path_argument(value: object, name: str = "path") -> str:
    """`value` (a str or an `os.PathLike` of one) as a str."""
    if isinstance(value, bytes):
        raise ArgumentTypeError(f"{name} must be a str or a pathlib.Path, not bytes (decode it with os.fsdecode)")
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(text, str):
        raise ArgumentTypeError(f"{name} must be a str or a pathlib.Path, got {type(value).__name__} {value!r}")
    return text


def refuse_single_path(values: object, name: str = "paths") -> Iterable[object]:
    """`values` when it is an iterable that is not itself one path (a str would be iterated character by
    character), without consuming it."""
    if isinstance(values, (str, bytes, os.PathLike)):
        raise ArgumentTypeError(f"{name} must be a list of paths, not a single {type(values).__name__}: "
                                f"write [{values!r}]")
    if not isinstance(values, Iterable):
        raise ArgumentTypeError(f"{name} must be a list of paths, got {type(values).__name__} {values!r}")
    return values


def path_arguments(values: object, name: str = "paths") -> list[str]:
    """A list of paths (each a str or an `os.PathLike`) as a list of str."""
    return [path_argument(value, f"each of {name}") for value in refuse_single_path(values, name)]


def support_argument(support: object) -> dict[str, list[str]]:
    """A few-shot support set, {class name: its image files}, sorted by class name; each class needs an image."""
    if not isinstance(support, Mapping):
        raise ArgumentTypeError(f"support must map each class name to a list of its image files, got "
                                f"{type(support).__name__}")
    if not support:
        raise InvalidArgumentError("support holds no class")
    members = {name: path_arguments(support[name], f"support[{name!r}]") for name in sorted(support)}
    empty = next((name for name, files in members.items() if not files), None)
    if empty is not None:
        raise InvalidArgumentError(f"support class {empty!r} has no images")
    return members


def k_argument(k: object) -> int:
    """A number of neighbours: an int (not a bool) of at least 1."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise ArgumentTypeError(f"k must be an int, got {type(k).__name__} {k!r}")
    if k < 1:
        raise InvalidArgumentError(f"k must be at least 1, got {k}")
    return int(k)


def threshold_argument(threshold: object) -> float:
    """A squared-L2 distance threshold: a finite real number (not a bool) of at least 0."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise ArgumentTypeError(f"threshold must be a number, got {type(threshold).__name__} {threshold!r}")
    if not math.isfinite(threshold) or threshold < 0:
        raise InvalidArgumentError(f"threshold must be a finite squared-L2 distance of at least 0, got {threshold}")
    return float(threshold)


def unreadable_reason(path: Path) -> str | None:
    """Why `path` cannot be read as an image file ("no such file", "is a directory", ...), or None when it is a
    readable regular file.

    Told from the file's status alone: a FIFO or a device is never opened, as reading one could block or never end.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        return "broken symbolic link" if path.is_symlink() else "no such file"
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()
    except ValueError:
        return "the file name holds a NUL character"
    if stat.S_ISREG(info.st_mode):
        return None if os.access(path, os.R_OK) else "permission denied"
    if stat.S_ISDIR(info.st_mode):
        return "is a directory"
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a character device",
             stat.S_ISBLK: "a block device"}
    kind = next((name for test, name in kinds.items() if test(info.st_mode)), "a special file")
    return f"is {kind}, not a regular file"


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def byte_size_argument(text: str, name: str = "--max-memory") -> int:
    """A size in bytes from `2G`, `512M`, `1.5G`, `100000` (K, M, G, T are powers of 1024; a trailing B is
    allowed); `InvalidArgumentError` otherwise."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", text.upper()) if isinstance(text, str) else None
    if match is None:
        raise InvalidArgumentError(f"{name} must be a size such as 2G, 512M or 100000 (bytes), not {text!r}")
    size = int(float(match.group(1)) * _UNITS[match.group(2)])
    if size <= 0:
        raise InvalidArgumentError(f"{name} must be more than 0 bytes")
    return size

