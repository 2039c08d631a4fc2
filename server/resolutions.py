"""The page's "resolve" and "undo": a group's others moved to the quarantine folder or the trash through
`retrieval.decisions.moves`, one folder and one manifest per resolve, so that `simsearch undo MANIFEST` and the page's
Undo restore the same files the same way.

Where files go is the server's choice, never the page's: the quarantine folder is `simsearch serve --quarantine
DIR` (default: `quarantine/` in the index directory, which `simsearch index` never scans, so moved files cannot
come back by a re-index). Each resolve gets `QUARANTINE/<resolution>/`, named by the time, the group's id and a
random tail (`RESOLUTION_ID`): moved there, the others lie under it at their path relative to the folder holding
the indexed images, beside `simsearch-moves.jsonl`; sent to the trash, only `trash-moves.jsonl` is there. The page
names a resolve to undo by that id alone, checked against `RESOLUTION_ID` (no path can be spelled with it).
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from retrieval.atomic import writable_folder
from retrieval.decisions.dedup import DuplicateGroup
from retrieval.decisions.moves import (MANIFEST_NAME, TRASH_MANIFEST_NAME, MoveReport, UndoReport, move_duplicates,
                                       read_manifest, trash_duplicates, undo_moves)
from retrieval.errors import MoveError, OutputWriteError
from retrieval.index import SimilarityIndex
from retrieval.sources.file_identity import something_at

Destination = Literal["quarantine", "trash"]
QUARANTINE_FOLDER = "quarantine"
"""The default quarantine folder, in the index directory."""
RESOLUTION_ID = re.compile(r"[0-9]{8}T[0-9]{6}-[0-9a-f]{16}-[0-9a-f]{6}")
MANIFESTS = (MANIFEST_NAME, TRASH_MANIFEST_NAME)
LISTED = 50
"""Resolves `Resolutions.recent` lists, the latest first."""


@dataclass(frozen=True)
class Resolution:
    """One resolve: its id, where its files went, its manifest, and how many of its files are still away."""

    id: str
    destination: Destination
    manifest: Path
    group: str
    keeper: str
    files: int
    away: int
    at: str

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "destination": self.destination, "manifest": str(self.manifest),
                "group": self.group, "keeper": self.keeper, "files": self.files, "away": self.away, "at": self.at}


class Resolutions:
    """The resolves made from the page, kept under `folder` (the quarantine folder)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(os.path.abspath(folder))

    def resolve(self, index: SimilarityIndex, group: DuplicateGroup, group_id: str, destination: Destination
                ) -> tuple[str, MoveReport]:
        """Move `group`'s others to the quarantine or the trash, each checked just before, as `dedup --move-to`
        and `--trash` do; (the resolve's id, what was done). `MoveError` when its folder cannot be made."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        resolution = f"{stamp}-{group_id}-{uuid.uuid4().hex[:6]}"
        folder = self.folder / resolution
        if destination == "quarantine":
            report = move_duplicates(index, [group], folder)
        else:
            try:
                writable_folder(folder)
            except OutputWriteError as exc:
                raise MoveError(str(exc)) from exc
            report = trash_duplicates(index, [group], folder / TRASH_MANIFEST_NAME)
        if not report.moved:
            _remove_if_empty(folder, report.manifest)
        return resolution, report

    def undo(self, resolution: str, index: SimilarityIndex) -> UndoReport:
        """Put the files of the resolve `resolution` back and into the index (`undo_moves`); `MoveError` for an
        id that names no resolve here."""
        manifest = self.manifest_of(resolution)
        records, _ = read_manifest(manifest)
        if any(record.index not in (None, str(index.root)) for record in records):
            # a quarantine folder two servers share: that index's files are not added to this one
            raise MoveError(f"the resolve {resolution} was made on another index: `simsearch undo {manifest}`")
        return undo_moves(manifest, index)

    def manifest_of(self, resolution: str) -> Path:
        if not RESOLUTION_ID.fullmatch(resolution):
            raise MoveError("not a resolve of this page")
        for name in MANIFESTS:
            manifest = self.folder / resolution / name
            if manifest.is_file():
                return manifest
        raise MoveError(f"no resolve {resolution} in the quarantine folder")

    def recent(self) -> list[Resolution]:
        """The latest `LISTED` resolves, the latest first, each with how many of its files are still away."""
        try:
            names = sorted((entry.name for entry in os.scandir(self.folder)
                            if entry.is_dir(follow_symlinks=False) and RESOLUTION_ID.fullmatch(entry.name)),
                           reverse=True)
        except OSError:
            return []
        found = []
        for name in names:
            if len(found) == LISTED:
                break
            try:
                manifest = self.manifest_of(name)
                records, _ = read_manifest(manifest)
            except MoveError:
                continue
            if not records:
                continue
            away = sum(1 for record in records if record.destination is not None
                       and something_at(record.destination) and not something_at(record.source))
            found.append(Resolution(name, "trash" if manifest.name == TRASH_MANIFEST_NAME else "quarantine",
                                    manifest, name.split("-")[1], records[0].keeper, len(records), away,
                                    records[0].at))
        return found


def _remove_if_empty(folder: Path, manifest: Path) -> None:
    """A resolve that moved nothing leaves nothing behind (its folder and empty manifest, made a moment ago)."""
    try:
        if manifest.is_file() and manifest.stat().st_size == 0:
            manifest.unlink()
        folder.rmdir()
    except OSError:
        pass  # something is in it: kept
