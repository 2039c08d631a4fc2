"""What the pipeline tells whoever runs it: progress, per-file warnings, the closing summary."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol


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
