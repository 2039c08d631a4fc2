"""Which image of a duplicate group to keep: rules applied in order, and the one that decided.

`--keep largest,quality,oldest,shortest-path,prefer:DIR,format:png` compares two candidates by the first rule,
then the next where they tie, and so on (the path last, for a stable answer). A group's keeper is named with the
rule that set it apart from the runner-up.

Pixels, file size and file time are the index's; when a photo was taken and a JPEG's quality are read from the
group's own files as they are compared (`retrieval.decisions.photo_facts`: only while a file is still the one indexed).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Protocol

from retrieval.errors import InvalidArgumentError

if TYPE_CHECKING:
    from retrieval.decisions.photo_facts import PhotoFacts

DEFAULT_RULES = "largest,quality,oldest,shortest-path"

GOOD_JPEG_QUALITY = 90
"""The JPEG quality from which `quality` takes a JPEG for an original rather than a lossy copy: cameras and phones
save at 90 to 98 and editors re-save at 90 or more by default (GIMP 90, ImageMagick 92), so two such files, or one
and a file whose loss cannot be estimated (not a JPEG: PNG, HEIC, WebP, RAW, ...), tie and the next rule decides
between them; below it (web exports, messengers, Pillow's default 75), the higher quality keeps."""

_NEVER = 2**63 - 1


class Keepable(Protocol):
    path: str
    mtime_ns: int | None
    size: int | None
    file_id: str | None

    @property
    def pixels(self) -> int: ...


@dataclass(frozen=True)
class KeeperRule:
    name: str
    key: Callable[[Keepable], object]


def _facts(candidate: Keepable) -> PhotoFacts:
    from retrieval.decisions.photo_facts import indexed_photo_facts  # Pillow and numpy: only once a keeper is chosen

    return indexed_photo_facts(candidate.path, candidate.file_id, candidate.size, candidate.mtime_ns)


def _mtime(candidate: Keepable) -> int:
    return candidate.mtime_ns if candidate.mtime_ns is not None else _NEVER


def _age(candidate: Keepable) -> tuple[int, int]:
    """When the photo was taken (its EXIF capture time, else its file time), then its file time: a copy that kept
    the capture time of its original is still told apart by being written later."""
    taken = _facts(candidate).taken_ns
    return (taken if taken is not None else _mtime(candidate)), _mtime(candidate)


def _quality(candidate: Keepable) -> int:
    """The estimated JPEG quality up to `GOOD_JPEG_QUALITY` (that, for a file that is not a JPEG), negated."""
    quality = _facts(candidate).jpeg_quality
    return -min(quality if quality is not None else GOOD_JPEG_QUALITY, GOOD_JPEG_QUALITY)


def _under(folder: str) -> Callable[[Keepable], object]:
    root = os.path.abspath(os.path.expanduser(folder)).rstrip("/") + "/"
    return lambda candidate: 0 if candidate.path.startswith(root) else 1


def _format(suffix: str) -> Callable[[Keepable], object]:
    wanted = "." + suffix.lower().lstrip(".")
    aliases = {".jpg": {".jpg", ".jpeg"}, ".jpeg": {".jpg", ".jpeg"}, ".tif": {".tif", ".tiff"},
               ".tiff": {".tif", ".tiff"}}.get(wanted, {wanted})
    return lambda candidate: 0 if PurePath(candidate.path).suffix.lower() in aliases else 1


FIXED: dict[str, Callable[[Keepable], object]] = {
    "largest": lambda c: -c.pixels,
    "smallest": lambda c: c.pixels,
    "largest-file": lambda c: -(c.size or 0),
    "smallest-file": lambda c: c.size if c.size is not None else _NEVER,
    "quality": _quality,
    "oldest": _age,
    "newest": lambda c: tuple(-time for time in _age(c)),
    "shortest-path": lambda c: len(c.path),
    "longest-path": lambda c: -len(c.path),
}


def parse_rules(text: str) -> tuple[KeeperRule, ...]:
    """The rules of a `--keep` value; `InvalidArgumentError` naming one that is not a rule."""
    rules = []
    for part in (piece.strip() for piece in text.split(",")):
        if part in FIXED:
            rules.append(KeeperRule(part, FIXED[part]))
        elif part.startswith("prefer:") and len(part) > len("prefer:"):
            rules.append(KeeperRule(part, _under(part[len("prefer:"):])))
        elif part.startswith("format:") and len(part) > len("format:"):
            rules.append(KeeperRule(part, _format(part[len("format:"):])))
        else:
            raise InvalidArgumentError(f"--keep: {part!r} is not a rule (one of {', '.join(FIXED)}, prefer:DIR, "
                                       "format:EXT, comma-separated)")
    return tuple(rules)


DEFAULT = parse_rules(DEFAULT_RULES)


def order_key(rules: Sequence[KeeperRule]) -> Callable[[Keepable], tuple[object, ...]]:
    """Sort key putting the candidate the rules keep first."""
    return lambda candidate: (*(rule.key(candidate) for rule in rules), candidate.path)


def deciding_rule(rules: Sequence[KeeperRule], keeper: Keepable, runner_up: Keepable) -> str:
    """The first rule that sets the keeper apart from the runner-up ("path" when they tie on every rule)."""
    return next((rule.name for rule in rules if rule.key(keeper) != rule.key(runner_up)), "path")
