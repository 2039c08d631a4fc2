"""Which image of a duplicate group to keep: rules applied in order, and the one that decided.

`--keep largest,oldest,shortest-path,prefer:DIR,format:png` compares two candidates by the first rule, then the
next where they tie, and so on (the path last, for a stable answer). A group's keeper is named with the rule
that set it apart from the runner-up.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Protocol

from retrieval.errors import InvalidArgumentError

DEFAULT_RULES = "largest,oldest,shortest-path"


class Keepable(Protocol):
    path: str
    mtime_ns: int | None

    @property
    def pixels(self) -> int: ...


@dataclass(frozen=True)
class KeeperRule:
    name: str
    key: Callable[[Keepable], object]


def _mtime(candidate: Keepable) -> int:
    return candidate.mtime_ns if candidate.mtime_ns is not None else 2**63 - 1


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
    "oldest": _mtime,
    "newest": lambda c: -_mtime(c),
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
