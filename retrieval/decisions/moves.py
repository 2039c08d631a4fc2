"""Acting on duplicate groups so that every action can be undone: move each proposed duplicate under a folder
(`move_duplicates`) or send it to the desktop's trash (`trash_duplicates`), each move on record in a manifest
before it happens; `undo_moves` puts every file back.

simsearch never deletes a file. What it moves is what `dedup --print0` lists, a group's `others`, never a keeper,
and never the last copy of its content. Just before each move:

- the path must still hold the file indexed there (device, inode, size, modification time: `FileIdentity.
  is_as_indexed`), hold the content indexed (its SHA-256, read now) and not be a symbolic link (its target is the
  file);
- its keeper must still be there as indexed, and be another file (another device:inode).

Nothing is overwritten: a destination that exists is refused, reported, and the run goes on. On one file system a
file is hard-linked to its new name (which fails rather than replace anything) and then unlinked from the old one;
where the file system has no hard links, `os.rename` after looking that the name is free. Across file systems it
is copied to a temporary beside its destination, fsynced, read back and compared by SHA-256, linked into place, and
only then removed from where it was. `undo_moves` moves back the same way.

The manifest is JSON lines, appended: each move's line is written, flushed and fsynced before the move, so a crash
never loses track of a moved file; a line whose move did not happen (refused at the last moment, or a crash just
before it) reads as "already back" to `undo_moves`. A move's later lines (the trash location, once found)
supersede its first.

The index follows the files: moved files leave it (`IndexStore.remove_images`), so that no later dedup proposes
them again; `undo_moves` adds each restored file back with its stored vector (`IndexStore.write_images`), and
names those whose vector an index run has dropped meanwhile, to be indexed again.

The trash: send2trash does not say where it put a file. On a freedesktop trash (Linux and other Unix desktops:
`$XDG_DATA_HOME/Trash`, or `.Trash/UID` / `.Trash-UID` at the top of the file's own file system) the file is
found again by its device and inode (a trash on the same file system renames it there), else by its trash-info
entry and its SHA-256; then `undo_moves` restores it and removes its trash-info entry, as a desktop's "restore"
does. Where it cannot be found (macOS, Windows, a desktop's own trash service), the manifest says so and undo
leaves that file to the desktop's trash.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal
from urllib.parse import unquote

from retrieval.atomic import writable_folder
from retrieval.decisions.dedup import Candidate, DuplicateGroup
from retrieval.errors import MoveError, OutputWriteError, SimsearchError
from retrieval.index import SimilarityIndex
from retrieval.sources.content_hash import hash_file
from retrieval.sources.file_identity import FileIdentity, file_id, identify_file, something_at
from retrieval.store.records import ImageChange

MANIFEST_NAME = "simsearch-moves.jsonl"
"""The manifest of `move_duplicates`, in the folder the files are moved to."""
TRASH_MANIFEST_NAME = "trash-moves.jsonl"
"""The manifest of `trash_duplicates`, in the index directory."""
COPY_CHUNK = 1 << 20
NO_HARD_LINKS = {errno.EPERM, errno.EACCES, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}
"""What `os.link` says on a file system without hard links (FAT, some network shares) or where they are not
allowed (`protected_hardlinks` for a file of another owner): then a rename, after looking."""

Action = Literal["move", "trash"]
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class MoveRecord:
    """One line of a manifest: the file at `source` moved to `destination` (None: sent to the trash, where is
    not known), as it was indexed (content, size and what the index knew of it) and in which group."""

    action: Action
    move_id: str
    source: str
    destination: str | None
    content_hash: str
    group: int
    keeper: str
    copy: bool
    size: int | None = None
    width: int | None = None
    height: int | None = None
    label: str | None = None
    index: str | None = None
    """The index directory the file was indexed in (undo adds it back there)."""
    trash_info: str | None = None
    """The trash-info entry of a file in a freedesktop trash (for a person: undo removes the one its place names,
    `_trash_info_of`)."""
    at: str = ""
    folder: str | None = None
    """The real path (`os.path.realpath`) of the folder the file was moved from: undo puts it back only where
    that folder still is, never through a symbolic link planted on the way since (None: a manifest of before)."""

    def to_dict(self) -> dict[str, object]:
        return {"action": self.action, "move_id": self.move_id, "from": self.source, "to": self.destination,
                "content_hash": self.content_hash, "group": self.group, "keeper": self.keeper, "copy": self.copy,
                "size": self.size, "width": self.width, "height": self.height, "label": self.label,
                "index": self.index, "trash_info": self.trash_info, "at": self.at, "folder": self.folder}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> MoveRecord:
        """The record of a manifest line; `KeyError`, `TypeError` or `ValueError` for one that is not (a file
        anyone may edit: both places must be absolute paths, the content a SHA-256)."""
        def text(key: str) -> str | None:
            value = data.get(key)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{key} is not text")
            return value

        def number(key: str) -> int | None:
            value = data.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"{key} is not a whole number")
            return value

        action, source, destination, digest = data["action"], text("from"), text("to"), text("content_hash")
        if action not in ("move", "trash"):
            raise ValueError(f"unknown action {action!r}")
        if not source or not os.path.isabs(source) or (destination is not None and not os.path.isabs(destination)):
            raise ValueError("from and to must be absolute paths")
        if digest is None or not _SHA256.fullmatch(digest):
            raise ValueError("content_hash is not a SHA-256")
        return cls(action, text("move_id") or "", source, destination,  # type: ignore[arg-type]
                   digest, number("group") or 0, text("keeper") or "", bool(data.get("copy")), number("size"),
                   number("width"), number("height"), text("label"), text("index"), text("trash_info"),
                   text("at") or "", text("folder"))


@dataclass(frozen=True)
class NotDone:
    """A file that was not moved or not restored, and why (one line)."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "reason": self.reason}


@dataclass
class MoveReport:
    """What `move_duplicates` or `trash_duplicates` did: the manifest, the moves made, the files refused."""

    manifest: Path
    moved: list[MoveRecord] = field(default_factory=list)
    refused: list[NotDone] = field(default_factory=list)
    left_index: int = 0
    """Index rows removed (the moved files')."""
    target_under: str | None = None
    """An indexed root the target folder lies under, unhidden: `simsearch index` of that root would index the
    moved files again."""
    unlocated: int = 0
    """Files sent to the trash whose place there could not be found (undo leaves them to the desktop)."""

    def to_dict(self) -> dict[str, object]:
        return {"manifest": str(self.manifest), "moved": [record.to_dict() for record in self.moved],
                "refused": [refusal.to_dict() for refusal in self.refused], "left_index": self.left_index}


@dataclass
class UndoReport:
    """What `undo_moves` did: files put back, files that were back already, files it could not restore, and the
    index: files added back to it, files it has no vector for any more (to index again), or why it was not
    updated."""

    restored: list[MoveRecord] = field(default_factory=list)
    already_back: list[MoveRecord] = field(default_factory=list)
    failed: list[NotDone] = field(default_factory=list)
    reindexed: int = 0
    to_index: list[str] = field(default_factory=list)
    index_error: str | None = None


# --- where things go ------------------------------------------------------------------------------------------


def collection_root(paths: Iterable[str]) -> str:
    """The folder that holds every one of `paths` (absolute): the deepest common folder of their folders."""
    folders = {os.path.dirname(path) for path in paths}
    return os.path.commonpath(sorted(folders)) if folders else os.sep


def destination_for(path: str, roots: Sequence[str], target: Path | str) -> str:
    """Where `path` (absolute) goes under `target`: its path relative to the outermost of `roots` holding it (a
    root that is the file itself: its name), else all its absolute path's components."""
    for root in sorted((root.rstrip(os.sep) or os.sep for root in roots), key=len):
        if path == root:
            return os.path.join(target, os.path.basename(path))
        prefix = root if root.endswith(os.sep) else root + os.sep
        if path.startswith(prefix):
            return os.path.join(target, path[len(prefix):])
    return os.path.join(target, path.lstrip(os.sep))


def _unhidden_root_above(target: Path, roots: Sequence[str]) -> str | None:
    """The root that `target` lies under where no folder on the way is hidden (`simsearch index` skips those)."""
    folder = os.path.abspath(target)
    for root in roots:
        relative = os.path.relpath(folder, root)
        if relative == "." or relative.startswith(".."):
            continue
        if not any(part.startswith(".") for part in relative.split(os.sep)):
            return root
    return None


# --- moving one file, never overwriting -----------------------------------------------------------------------


def _fsync_folder(folder: str) -> None:
    try:
        handle = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass  # a file system that cannot sync a folder: its rename is as durable as it gets
    finally:
        os.close(handle)


def _link_or_rename(source: str, destination: str) -> None:
    """Give the file at `source` the name `destination` on one file system, never replacing one there; raises
    `FileExistsError` when `destination` exists, `OSError` (EXDEV) across file systems."""
    try:
        os.link(source, destination, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in NO_HARD_LINKS:
            raise
        if something_at(destination):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), destination) from None
        os.rename(source, destination)
        return
    try:
        os.unlink(source)
    except OSError:
        os.unlink(destination)  # the name made a moment ago: the file stays where it was
        raise


def _copy_across(source: str, destination: str, digest: str) -> None:
    """Move `source` to another file system: copy, fsync, read back and compare, link into place, then remove
    the source, which must not have changed meanwhile."""
    folder = os.path.dirname(destination)
    temporary = os.path.join(folder, f".{os.path.basename(destination)}.{os.getpid()}.simsearch-move")
    before = os.stat(source)
    try:
        written = hashlib.sha256()
        with open(source, "rb") as reading, open(temporary, "xb") as writing:
            while chunk := reading.read(COPY_CHUNK):
                written.update(chunk)
                writing.write(chunk)
        shutil.copystat(source, temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        if written.hexdigest() != digest:
            raise OSError(errno.EAGAIN, "it changed while being copied")
        if hash_file(temporary) != digest:
            raise OSError(errno.EIO, "its copy does not read back the same")
        _link_or_rename(temporary, destination)
        _fsync_folder(folder)
        after = os.stat(source)
        if (after.st_ino, after.st_size, after.st_mtime_ns) != (before.st_ino, before.st_size, before.st_mtime_ns):
            os.unlink(destination)  # the copy made here; the source stays
            raise OSError(errno.EAGAIN, "it changed while being copied")
        os.unlink(source)
        _fsync_folder(os.path.dirname(source))
    finally:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass


def _place(source: str, destination: str, digest: str) -> None:
    """Move the file at `source` to `destination` (its folders made as needed), never overwriting."""
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    try:
        _link_or_rename(source, destination)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_across(source, destination, digest)


def _holds(path: str, digest: str) -> bool:
    """Whether `path` is a regular file (not a link) with content `digest`."""
    if os.path.islink(path) or not os.path.isfile(path):
        return False
    try:
        return hash_file(path) == digest
    except OSError:
        return False


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


# --- the manifest ---------------------------------------------------------------------------------------------


class _Manifest:
    """A manifest opened to append; each line is flushed and fsynced before `write` returns."""

    def __init__(self, path: Path) -> None:
        new = not path.exists()
        try:
            self._handle = open(path, "a", encoding="utf-8")
        except OSError as exc:
            raise MoveError(f"cannot write the manifest {path}: {_reason(exc)}") from exc
        if new:
            _fsync_folder(str(path.parent))

    def write(self, record: MoveRecord) -> None:
        # ensure_ascii: a file name that is not UTF-8 (lone surrogates) round-trips as \udcNN escapes
        self._handle.write(json.dumps(record.to_dict(), ensure_ascii=True) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()


def read_manifest(path: Path) -> tuple[list[MoveRecord], list[NotDone]]:
    """The records of a manifest, each move's latest line, in the order the moves were made; and a `NotDone` for
    each line that is not a record (a torn last line: a move that never happened). `MoveError` when the file
    cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise MoveError(f"cannot read the manifest {path}: {_reason(exc)}") from exc
    latest: dict[str, MoveRecord] = {}
    unreadable = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise TypeError("not an object")
            record = MoveRecord.from_dict(data)
        except (ValueError, TypeError, KeyError) as exc:
            unreadable.append(NotDone(f"{path}:{number}", f"not a move record ({exc})"))
            continue
        latest[record.move_id] = record  # the move's latest line, in the place of its first
    return list(latest.values()), unreadable


# --- moving duplicates ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Proposal:
    other: Candidate
    keeper: Candidate
    group: int
    copy: bool


def _proposals(groups: Sequence[DuplicateGroup]) -> list[_Proposal]:
    """Every group's others, with their keeper and group number (as the dedup table numbers them)."""
    return [_Proposal(other, group.keeper, number, copy)
            for number, group in enumerate(groups, 1) for other, copy in zip(group.others, group.copies)]


def _refusal(proposal: _Proposal, gone: set[str]) -> tuple[str | None, FileIdentity | None]:
    """Why this duplicate must not leave its place now (None when it may), and what its path reaches."""
    other, keeper = proposal.other, proposal.keeper
    if os.path.islink(other.path):
        return "a symbolic link: its target is the file (not moved)", None
    identity = identify_file(other.path)
    if identity is None:
        return "no longer there", None
    if not identity.is_as_indexed(other.file_id, other.size, other.mtime_ns):
        return "changed since it was indexed (index again, then dedup)", identity
    kept = identify_file(keeper.path)
    if keeper.path in gone or kept is None or not kept.is_as_indexed(keeper.file_id, keeper.size, keeper.mtime_ns):
        return f"its keeper {keeper.path} is no longer there as indexed", identity
    if kept.file_id == identity.file_id:
        return f"the same file as its keeper {keeper.path}", identity
    return None, identity


def _checked_content(proposal: _Proposal) -> tuple[str | None, str | None]:
    """(its SHA-256 now, None), or (None, why not) when it cannot be read or differs from the indexed content."""
    try:
        digest = hash_file(proposal.other.path)
    except OSError as exc:
        return None, f"cannot be read: {_reason(exc)}"
    if proposal.other.content_hash is not None and digest != proposal.other.content_hash:
        return None, "its content changed since it was indexed (index again, then dedup)"
    return digest, None


def _labels(index: SimilarityIndex) -> dict[str, str | None]:
    return {path: image.label for path, image in index.known_images([], 0, everything=True).items()}


def _record(action: Action, run: str, proposal: _Proposal, destination: str | None, digest: str,
            index: SimilarityIndex, labels: dict[str, str | None]) -> MoveRecord:
    other = proposal.other
    return MoveRecord(action, f"{run}-{proposal.group}-{uuid.uuid4().hex[:8]}", other.path, destination, digest,
                      proposal.group, proposal.keeper.path, proposal.copy, other.size, other.width, other.height,
                      labels.get(other.path), str(index.root), None,
                      datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      os.path.realpath(os.path.dirname(other.path)))


def move_duplicates(index: SimilarityIndex, groups: Sequence[DuplicateGroup], target: Path,
                    roots: Sequence[str] | None = None) -> MoveReport:
    """Move each group's others under `target`, at their path relative to the outermost of `roots` (absolute
    folders) that holds them (default: the folder holding every indexed image), recorded in
    `target/simsearch-moves.jsonl`; the moved files leave the index. Refusals are reported, never raised;
    `MoveError` when `target` cannot be made or written, `IndexUnavailableError` when another process writes
    the index (then nothing is moved)."""
    target = Path(os.path.abspath(target))
    try:
        writable_folder(target)
    except OutputWriteError as exc:
        raise MoveError(str(exc)) from exc
    labels = _labels(index)
    if roots is None:
        roots = [collection_root(labels)] if labels else []
    report = MoveReport(target / MANIFEST_NAME, target_under=_unhidden_root_above(target, roots))

    def place(proposal: _Proposal, record: MoveRecord, _: _Manifest) -> MoveRecord:
        assert record.destination is not None
        _place(proposal.other.path, record.destination, record.content_hash)
        return record

    def plan(proposal: _Proposal, digest: str, run: str) -> MoveRecord | str:
        destination = destination_for(proposal.other.path, roots, target)
        if something_at(destination):
            return f"{destination} exists (left alone)"
        return _record("move", run, proposal, destination, digest, index, labels)

    _act(index, groups, report, plan, place)
    return report


def trash_duplicates(index: SimilarityIndex, groups: Sequence[DuplicateGroup], manifest: Path | None = None,
                     send: Callable[[str], object] | None = None,
                     trash_folders: Callable[[str], Sequence[Path]] | None = None) -> MoveReport:
    """Send each group's others to the desktop's trash (`send2trash`, or `send`), recorded in `manifest`
    (default: the index directory's `trash-moves.jsonl`) with where the trash put it when that can be found
    (`trash_folders(path)`: the freedesktop trash folders a file may go to; default: `freedesktop_trash_folders`);
    the trashed files leave the index. Checks and refusals as `move_duplicates`."""
    if send is None:
        from send2trash import send2trash

        send = send2trash
    folders = trash_folders or freedesktop_trash_folders
    labels = _labels(index)
    report = MoveReport(manifest or index.root / TRASH_MANIFEST_NAME)

    def plan(proposal: _Proposal, digest: str, run: str) -> MoveRecord | str:
        return _record("trash", run, proposal, None, digest, index, labels)

    def place(proposal: _Proposal, record: MoveRecord, manifest: _Manifest) -> MoveRecord:
        identity = identify_file(record.source)
        try:
            send(record.source)
        except OSError:
            raise
        except Exception as exc:  # a desktop trash's own error (gio's), for one file: reported, the run goes on
            raise OSError(errno.EIO, f"the trash refused it: {exc}") from exc
        found = _find_in_trash(record.source, identity, record.content_hash, folders(record.source))
        if found is None:
            report.unlocated += 1
            return record
        located = replace(record, destination=found[0], trash_info=found[1])
        manifest.write(located)
        return located

    _act(index, groups, report, plan, place)
    return report


def _act(index: SimilarityIndex, groups: Sequence[DuplicateGroup], report: MoveReport,
         plan: Callable[[_Proposal, str, str], MoveRecord | str],
         place: Callable[[_Proposal, MoveRecord, _Manifest], MoveRecord]) -> None:
    """For each proposed duplicate: check it (`_refusal`, its content), plan its move (a record, or why not),
    write the record, move it. Under the index's writer lock for the whole run; the moved files' rows are
    removed at the end, whatever stopped the run."""
    run = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    moved_ids: list[int] = []
    gone: set[str] = set()
    with index.writer():
        manifest = _Manifest(report.manifest)
        try:
            for proposal in _proposals(groups):
                path = proposal.other.path
                reason, _ = _refusal(proposal, gone)
                digest = None
                if reason is None:
                    digest, reason = _checked_content(proposal)
                planned = plan(proposal, digest, run) if digest is not None else reason
                if not isinstance(planned, MoveRecord):
                    report.refused.append(NotDone(path, str(planned)))
                    continue
                manifest.write(planned)
                try:
                    done = place(proposal, planned, manifest)
                except FileExistsError:
                    report.refused.append(NotDone(path, f"{planned.destination} exists (left alone)"))
                    continue
                except OSError as exc:
                    report.refused.append(NotDone(path, _reason(exc)))
                    continue
                report.moved.append(done)
                gone.add(path)
                if proposal.other.image_id is not None:
                    moved_ids.append(proposal.other.image_id)
        finally:
            manifest.close()
            index.remove_images(moved_ids)
            report.left_index = len(moved_ids)


# --- the freedesktop trash ------------------------------------------------------------------------------------


def freedesktop_trash_folders(path: str) -> list[Path]:
    """The trash folders a freedesktop trash (send2trash's own, on Linux and BSD) may put `path` in: the home
    trash, then those at the top of its file system. None on macOS and Windows, whose trash is the system's."""
    if sys.platform in ("darwin", "win32"):
        return []
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    folders = [Path(data_home) / "Trash"]
    top = os.path.realpath(os.path.dirname(path) or ".")
    while not os.path.ismount(top):
        top = os.path.dirname(top)
    uid = os.getuid()
    folders += [Path(top) / ".Trash" / str(uid), Path(top) / f".Trash-{uid}"]
    return folders


def _find_in_trash(original: str, identity: FileIdentity | None, digest: str, folders: Sequence[Path]
                   ) -> tuple[str, str] | None:
    """(the file, its trash-info entry) of `original` in one of the trash `folders`: a name the trash gives it
    (`NAME` or `STEM N.EXT`) holding the same file (device:inode), else one whose entry names `original` and whose
    content is `digest`; None when not found."""
    name = os.path.basename(original)
    stem, extension = os.path.splitext(name)
    given = re.compile(re.escape(stem) + r"( \d+)?" + re.escape(extension))
    found: list[tuple[Path, str]] = []
    for folder in folders:
        try:
            entries = os.listdir(folder / "files")
        except OSError:
            continue
        for entry in entries:
            if given.fullmatch(entry):
                found.append((folder, entry))
    for folder, entry in found:
        try:
            info = os.lstat(folder / "files" / entry)
        except OSError:
            continue
        if identity is not None and file_id(info) == identity.file_id:
            return str(folder / "files" / entry), str(folder / "info" / f"{entry}.trashinfo")
    for folder, entry in found:
        info_path = folder / "info" / f"{entry}.trashinfo"
        if _trashinfo_names(info_path, original) and _holds(str(folder / "files" / entry), digest):
            return str(folder / "files" / entry), str(info_path)
    return None


def _trashinfo_names(info_path: Path, original: str) -> bool:
    """Whether the trash-info entry's `Path=` is `original` (absolute, or relative to the trash's top folder)."""
    try:
        lines = info_path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except OSError:
        return False
    for line in lines:
        if line.startswith("Path="):
            named = os.fsdecode(unquote(line[len("Path="):]).encode("utf-8", "surrogateescape"))
            return named == original or (not named.startswith(os.sep) and original.endswith(os.sep + named))
    return False


# --- undo -----------------------------------------------------------------------------------------------------


def undo_moves(manifest: Path, index: SimilarityIndex | None = None) -> UndoReport:
    """Put every file of `manifest` back where it was, the latest move first, never overwriting: a file whose
    place holds a file again, or that changed since it was moved, stays where it is and is reported. Running it
    again finds everything already back. With `index`, the restored files (and those back already but not in
    it) are added back to the index with their stored vectors; `to_index` names those it has none for."""
    records, unreadable = read_manifest(manifest)
    report = UndoReport(failed=list(unreadable))
    for record in reversed(records):
        distrust = _untrusted(record, manifest)
        outcome = _restore(record) if distrust is None else NotDone(record.source, distrust)
        if outcome == "restored":
            report.restored.append(record)
        elif outcome == "already":
            report.already_back.append(record)
        else:
            report.failed.append(outcome)
    report.restored.reverse()
    report.already_back.reverse()
    if index is not None:
        try:
            report.reindexed, report.to_index = _return_to_index(index, report.restored + report.already_back)
        except SimsearchError as exc:
            report.index_error = str(exc)
    return report


def _untrusted(record: MoveRecord, manifest: Path) -> str | None:
    """Why undo must not act on `record`, a line of `manifest` (a file anyone may edit), None when it may. Undo
    moves back only what a move of this manifest made, to where it came from:

    - both places are absolute and normalised (no `..`);
    - a file moved under a folder (`move`) lies under the manifest's own folder (real paths: no symbolic link
      leads out of it), and the place it came from ends with its path there, as `destination_for` laid it out;
    - a file in a freedesktop trash (`trash`) is `TRASH/files/NAME`, NAME the name it had (or the trash's `STEM
      N.EXT` of it), and the trash's own entry `TRASH/info/NAME.trashinfo` names the place it came from;
    - the folder it came from is still the folder it was moved from (`MoveRecord.folder`, its real path): no
      symbolic link planted on the way since sends it elsewhere.
    """
    source, moved_to = record.source, record.destination
    if os.path.normpath(source) != source or (moved_to is not None and os.path.normpath(moved_to) != moved_to):
        return "its manifest line names a place that is not a normalised absolute path (left alone)"
    if record.folder is not None and os.path.realpath(os.path.dirname(source)) != record.folder:
        return (f"its folder is no longer the one it was moved from ({record.folder}): a symbolic link on the way? "
                f"(left at {moved_to or 'the trash'})")
    if moved_to is None or not something_at(moved_to):
        return None  # nothing to move back: `_restore` says whether it is back already
    if record.action == "move":
        folder = os.path.realpath(os.path.dirname(os.path.abspath(manifest)))
        within = os.path.relpath(os.path.join(os.path.realpath(os.path.dirname(moved_to)),
                                              os.path.basename(moved_to)), folder)
        if within == os.curdir or within.split(os.sep)[0] == os.pardir or os.path.isabs(within):
            return f"its manifest line names {moved_to}, which is not under the manifest's folder (left alone)"
        if not source.endswith(os.sep + within):
            return f"its manifest line's places do not match ({moved_to} was not moved from there; left alone)"
        return None
    trash, name = os.path.split(moved_to)
    stem, extension = os.path.splitext(os.path.basename(source))
    if os.path.basename(trash) != "files" \
            or not re.fullmatch(re.escape(stem) + r"( \d+)?" + re.escape(extension), name) \
            or not _trashinfo_names(Path(os.path.dirname(trash)) / "info" / f"{name}.trashinfo", source):
        return f"{moved_to} is not where a trash keeps a file from there (left alone)"
    return None


def _restore(record: MoveRecord) -> Literal["restored", "already"] | NotDone:
    moved_to, home = record.destination, record.source
    if moved_to is None:
        if _holds(home, record.content_hash):
            return "already"
        return NotDone(home, "sent to the desktop's trash, which did not say where: restore it from the trash")
    if not something_at(moved_to):
        if _holds(home, record.content_hash):
            return "already"
        where = "the trash" if record.action == "trash" else moved_to
        return NotDone(home, f"it is no longer at {where}")
    if something_at(home):
        return NotDone(home, f"a file is there again (left alone); the moved file stays at {moved_to}")
    if not _holds(moved_to, record.content_hash):
        return NotDone(home, f"{moved_to} changed since it was moved (left there)")
    try:
        _place(moved_to, home, record.content_hash)
    except FileExistsError:
        return NotDone(home, f"a file is there again (left alone); the moved file stays at {moved_to}")
    except OSError as exc:
        return NotDone(home, f"cannot move it back from {moved_to}: {_reason(exc)}")
    trash_info = _trash_info_of(moved_to) if record.action == "trash" else None
    if trash_info is not None:
        try:
            os.unlink(trash_info)  # the trash's note of it, as a desktop's "restore" removes it
        except OSError:
            pass
    return "restored"


def _trash_info_of(trashed: str) -> str | None:
    """The trash-info entry of a file in a freedesktop trash, `TRASH/files/NAME`: `TRASH/info/NAME.trashinfo`.
    Made from the file's place, never taken from the manifest, which is a file anyone may edit: undo removes
    no other file than this entry."""
    folder, name = os.path.split(trashed)
    if os.path.basename(folder) != "files":
        return None  # not in a freedesktop trash
    return os.path.join(os.path.dirname(folder), "info", f"{name}.trashinfo")


def _return_to_index(index: SimilarityIndex, records: Sequence[MoveRecord]) -> tuple[int, list[str]]:
    """Add the files of `records` that the index lacks back to it, with the vector stored for their content;
    (how many were added, the paths it has no vector for)."""
    indexed = {row.path for row in index.indexed_images()}
    wanted = {record.source: record for record in records if record.source not in indexed}
    served = index.served_model()
    if not wanted:
        return 0, []
    if served is None:
        return 0, sorted(wanted)
    stored = index.stored_hashes(served.id, {record.content_hash for record in wanted.values()})
    changes, missing = [], []
    for path, record in wanted.items():
        identity = identify_file(path)
        if identity is None or record.content_hash not in stored:
            missing.append(path)
            continue
        changes.append(ImageChange.indexed(path, file_id=identity.file_id, size=identity.size,
                                   mtime_ns=identity.mtime_ns, label=record.label, content_hash=record.content_hash,
                                   width=record.width, height=record.height, vector_hash=record.content_hash))
    if changes:
        with index.writer():
            index.write_images(served.id, changes)
    return len(changes), sorted(missing)
