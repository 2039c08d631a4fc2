"""What the pipeline tells whoever runs it: progress, per-file warnings, the closing summary."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

SHOWN_EXTENSIONS = 5
"""Extensions named in the count of files not read; the rest are summed up."""


class Reporter(Protocol):
    """Receives progress; `cli/` draws it, tests and the Python API may ignore it."""

    def start(self, stage: str, total: int) -> None: ...

    def advance(self, count: int) -> None: ...

    def warn(self, path: str, reason: str) -> None: ...


class SilentReporter:
    def start(self, stage: str, total: int) -> None:
        pass

    def advance(self, count: int) -> None:
        pass

    def warn(self, path: str, reason: str) -> None:
        pass


@dataclass
class IndexSummary:
    """Counts of one `simsearch index` run, by what happened to each file."""

    added: int = 0
    copies: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    reembedded: int = 0
    failed: int = 0
    still_failing: int = 0
    aliases: int = 0
    """Paths to a file indexed under another path (symbolic or hard links), not indexed twice."""
    other_files: dict[str, int] = field(default_factory=dict)
    """The files found that are not images simsearch reads, by extension ("" for none)."""
    embedded: int = 0
    embed_seconds: float = 0.0
    """From the first file decoded to the last vector written, loading the model included."""
    seconds: float = 0.0

    @property
    def problems(self) -> int:
        """Files under the given paths that are not indexed because they cannot be read."""
        return self.failed + self.still_failing

    def to_dict(self) -> dict[str, object]:
        return {**{name: value for name, value in dataclasses.asdict(self).items() if not name.endswith("seconds")},
                "seconds": round(self.seconds, 3)}


def other_files_text(counts: Mapping[str, int]) -> str:
    """The files not read, most common extension first: "not images simsearch reads: 41 .mov, 12 .cr2, 3 with no
    extension, 7 more of 4 other types"."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    shown = ranked if len(ranked) <= SHOWN_EXTENSIONS + 1 else ranked[:SHOWN_EXTENSIONS]
    named = [f"{count} {extension or 'with no extension'}" for extension, count in shown]
    rest = ranked[len(shown):]
    if rest:
        named.append(f"{sum(count for _, count in rest)} more of {len(rest)} other types")
    return "not images simsearch reads: " + ", ".join(named)
