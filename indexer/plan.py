"""Decide what each scanned file needs, from what the database already knows, without decoding.

An unchanged file (same path, size and mtime) is left alone. A file whose content might already
be indexed (a changed file, or a new one of a size seen before) is hashed first, so that a moved,
copied or merely touched file reuses its vector instead of being decoded again. Every other new
file goes straight to the decode workers, which hash it while they read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from retrieval.sources.scan import ScannedFile
from retrieval.store.records import KnownImage


@dataclass(frozen=True)
class Work:
    """A file that needs a decision after hashing, or an embedding."""

    file: ScannedFile
    known: KnownImage | None
    content_hash: str | None = None


@dataclass
class Plan:
    unchanged: int = 0
    still_failing: int = 0
    to_hash: list[Work] = field(default_factory=list)
    to_embed: list[Work] = field(default_factory=list)
    gone: list[KnownImage] = field(default_factory=list)
    new_file_ids: dict[int, str] = field(default_factory=dict)
    """Unchanged rows whose file now has another device and inode (restored from a backup, say), by row id."""

    def drop(self, paths: set[str]) -> None:
        """Forget the work on these paths."""
        self.to_hash = [w for w in self.to_hash if w.file.path not in paths]
        self.to_embed = [w for w in self.to_embed if w.file.path not in paths]


def make_plan(files: list[ScannedFile], known: dict[str, KnownImage], known_sizes: set[int],
              problem_paths: set[str]) -> Plan:
    """Sort `files` into what must happen to them; `known` holds the rows under the scanned roots."""
    plan = Plan()
    seen: set[str] = set()
    for file in files:
        seen.add(file.path)
        row = known.get(file.path)
        if row is not None and row.size == file.size and row.mtime_ns == file.mtime_ns:
            if row.file_id != file.file_id:
                plan.new_file_ids[row.id] = file.file_id
            if row.failed:
                plan.still_failing += 1
            elif row.has_target_vector:
                plan.unchanged += 1
            else:
                plan.to_hash.append(Work(file, row, row.content_hash))
        elif row is not None or file.size in known_sizes:
            plan.to_hash.append(Work(file, row))
        else:
            plan.to_embed.append(Work(file, None))
    plan.gone = [row for path, row in known.items() if path not in seen and path not in problem_paths]
    return plan
