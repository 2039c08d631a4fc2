"""Actions that can be undone: `dedup --move-to DIR` and `--trash` move what `--print0` lists, each checked just
before and recorded in a manifest first; `simsearch undo MANIFEST` puts every file back, byte for byte, never
overwriting; the index follows both ways."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import REPO, assert_one_line_error, invoke, photo
from retrieval import open_collection
from retrieval.decisions.dedup import DuplicateGroup
from retrieval.decisions.moves import (MANIFEST_NAME, TRASH_MANIFEST_NAME, MoveRecord, collection_root, destination_for,
                                       move_duplicates, read_manifest, trash_duplicates, undo_moves)
from retrieval.sources.file_identity import identify_file

THRESHOLD = "0.05"
"""Groups each photo with its copies and resized copies (the tiny model puts them within 1e-4), never two photos."""


def digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under `folder`, by path relative to it (the index directory aside)."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file() and ".simsearch" not in path.parts}


@pytest.fixture
def library(tmp_path: Path, tiny_model_file: Path) -> Path:
    """photos/: a, b, c distinct; a with an exact copy and a half-size copy, b with a copy in a subfolder whose
    name is long; indexed in tmp_path/.simsearch."""
    photos = tmp_path / "photos"
    (photos / "holiday").mkdir(parents=True)
    for i, name in enumerate("abc"):
        photo(i, (128, 96)).save(photos / f"{name}.png")
    shutil.copy(photos / "a.png", photos / "a-copy.png")
    photo(0, (64, 48)).save(photos / "a-small.png")
    shutil.copy(photos / "b.png", photos / "holiday" / "IMG_0001_b_crop_q40.png")
    result = invoke("index", "photos", "--model", str(tiny_model_file), "--workers", "0", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    return tmp_path


def groups_json(root: Path) -> list[dict[str, object]]:
    """The groups as `--json` prints them, without the image ids (a file added back to the index gets a new one)."""
    result = invoke("dedup", "--threshold", THRESHOLD, "--json", cwd=root)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.replace('"image_id"', '"_"'), object_hook=lambda d: {k: v for k, v in d.items()
                                                                                         if k != "_"})


def proposed(root: Path) -> list[str]:
    """What `--print0` lists."""
    result = invoke("dedup", "--threshold", THRESHOLD, "--print0", cwd=root)
    return sorted(filter(None, result.stdout.split("\0")))


def find_groups(root: Path) -> list[DuplicateGroup]:
    return open_collection(root / ".simsearch").dedup(threshold=float(THRESHOLD))


def test_move_then_undo_puts_every_file_back_byte_for_byte_and_the_index_follows(library: Path) -> None:
    before, groups, listed = digests(library), groups_json(library), proposed(library)
    assert len(listed) == 3
    moved = invoke("dedup", "--threshold", THRESHOLD, "--move-to", "dups", cwd=library)
    assert moved.exit_code == 0, moved.output
    assert "moved 3 files (2 exact copies)" in moved.stderr and "simsearch undo dups/simsearch-moves.jsonl" \
        in moved.stderr
    dups = library / "dups"
    assert sorted(str(p.relative_to(dups)) for p in dups.rglob("*.png")) == [
        "a-copy.png", "a-small.png", "holiday/IMG_0001_b_crop_q40.png"], "paths relative to the indexed root"
    assert not any(os.path.exists(path) for path in listed)
    for name in ("a.png", "b.png", "c.png"):
        assert (library / "photos" / name).is_file(), "the keepers stay"
    records, unreadable = read_manifest(dups / MANIFEST_NAME)
    assert unreadable == [] and sorted(r.source for r in records) == listed
    for record in records:
        moved_to = Path(record.destination or "")
        assert hashlib.sha256(moved_to.read_bytes()).hexdigest() == record.content_hash
        assert record.keeper in {str(library / "photos" / n) for n in ("a.png", "b.png")} and record.group in (1, 2)
    assert groups_json(library) == [], "the moved files left the index"

    undone = invoke("undo", "dups/simsearch-moves.jsonl", cwd=library)
    assert undone.exit_code == 0, undone.output
    assert "restored 3 files" in undone.stderr and "3 files back in the index" in undone.stderr
    after = digests(library)
    assert {k: v for k, v in after.items() if not k.startswith("dups/")} == before, "every file back byte for byte"
    assert list(dups.rglob("*.png")) == []
    assert groups_json(library) == groups, "the index finds them again"

    again = invoke("undo", "dups/simsearch-moves.jsonl", cwd=library)
    assert again.exit_code == 0 and again.stdout == ""
    assert again.stderr.strip() == "all 3 files of this manifest are back where they were already; nothing to do"
    assert digests(library) == after


def test_a_destination_that_exists_is_left_alone_and_reported(library: Path) -> None:
    (library / "dups").mkdir()
    (library / "dups" / "a-copy.png").write_bytes(b"not an image, and not ours")
    result = invoke("dedup", "--threshold", THRESHOLD, "--move-to", "dups", cwd=library)
    assert result.exit_code == 1, result.output
    [line] = [line for line in result.stderr.splitlines() if line.startswith("not moved")]
    assert line == "not moved: photos/a-copy.png: dups/a-copy.png exists (left alone)" or \
        line.endswith("a-copy.png exists (left alone)"), line
    assert (library / "dups" / "a-copy.png").read_bytes() == b"not an image, and not ours"
    assert (library / "photos" / "a-copy.png").is_file() and not (library / "photos" / "a-small.png").exists()
    assert "moved 2 files" in result.stderr
    assert proposed(library) == [str(library / "photos" / "a-copy.png")], "the file not moved stays indexed"


def test_a_file_changed_since_indexing_or_whose_keeper_is_gone_is_not_moved(library: Path) -> None:
    groups = find_groups(library)
    photos = library / "photos"
    small = photos / "a-small.png"
    photo(7, (64, 48)).save(small)  # rewritten after dedup looked: another inode, size or time
    copy = photos / "holiday" / "IMG_0001_b_crop_q40.png"
    info = copy.stat()
    data = bytearray(copy.read_bytes())
    data[-20] ^= 0xFF  # the same size, inode and time: only its content tells
    copy.write_bytes(bytes(data))
    os.utime(copy, ns=(info.st_atime_ns, info.st_mtime_ns))
    collection = open_collection(library / ".simsearch")
    assert collection.index is not None
    report = move_duplicates(collection.index, groups, library / "dups")
    reasons = {Path(r.path).name: r.reason for r in report.refused}
    assert reasons == {"a-small.png": "changed since it was indexed (index again, then dedup)",
                       "IMG_0001_b_crop_q40.png": "its content changed since it was indexed (index again, then dedup)"}
    assert [Path(r.source).name for r in report.moved] == ["a-copy.png"] and report.left_index == 1


def test_the_keeper_is_never_moved_nor_the_last_copy(library: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    groups = find_groups(library)
    photos = library / "photos"
    keepers = {group.keeper.path for group in groups}
    assert keepers == {str(photos / "a.png"), str(photos / "b.png")}
    assert not keepers & {other.path for group in groups for other in group.others}
    aside = tmp_path_factory.mktemp("aside")
    shutil.move(str(photos / "a.png"), aside / "a.png")  # the keeper goes away after dedup looked
    collection = open_collection(library / ".simsearch")
    assert collection.index is not None
    report = move_duplicates(collection.index, groups, library / "dups")
    reasons = {Path(r.path).name: r.reason for r in report.refused}
    gone = f"its keeper {photos / 'a.png'} is no longer there as indexed"
    assert reasons == {"a-copy.png": gone, "a-small.png": gone}
    assert [Path(r.source).name for r in report.moved] == ["IMG_0001_b_crop_q40.png"]
    assert (photos / "a-copy.png").is_file() and (photos / "a-small.png").is_file() and (photos / "b.png").is_file()

    link = photos / "b-link.png"
    os.link(photos / "b.png", link)  # another path to the keeper's own file: moving it would leave no copy
    [b_group] = [group for group in groups if group.keeper.path == str(photos / "b.png")]
    now = identify_file(str(link))
    assert now is not None
    other = replace(b_group.others[0], path=str(link), file_id=now.file_id, size=now.size, mtime_ns=now.mtime_ns,
                    image_id=None)
    same_file = replace(b_group, others=[other])
    report = move_duplicates(collection.index, [same_file], library / "dups")
    assert report.moved == [] and [r.reason for r in report.refused] == [
        f"the same file as its keeper {photos / 'b.png'}"]
    assert link.is_file()


def test_a_file_recreated_at_its_place_blocks_its_restore_with_one_line(library: Path) -> None:
    assert invoke("dedup", "--threshold", THRESHOLD, "--move-to", "dups", cwd=library).exit_code == 0
    (library / "photos" / "a-small.png").write_bytes(b"a new file that took the name")
    result = invoke("undo", "dups/simsearch-moves.jsonl", cwd=library)
    assert result.exit_code == 1, result.output
    failures = [line for line in result.stderr.splitlines() if line.startswith("not restored")]
    assert failures == ["not restored: photos/a-small.png: a file is there again (left alone); the moved file "
                        f"stays at {library / 'dups' / 'a-small.png'}"]
    assert "restored 2 files; 1 could not be restored" in result.stderr
    assert (library / "photos" / "a-small.png").read_bytes() == b"a new file that took the name"
    assert (library / "dups" / "a-small.png").is_file() and (library / "photos" / "a-copy.png").is_file()
    (library / "photos" / "a-small.png").unlink()
    last = invoke("undo", "dups/simsearch-moves.jsonl", cwd=library)
    assert last.exit_code == 0 and "restored 1 file (2 were back already)" in last.stderr, last.output


def test_undo_indexes_again_a_file_whose_vector_an_index_run_dropped(library: Path) -> None:
    """`simsearch index` after the move drops the vectors no indexed image uses (the half-size copy's: the exact
    copies share their keeper's); undo then embeds that file again, and the groups are as before."""
    groups = groups_json(library)
    assert invoke("dedup", "--threshold", THRESHOLD, "--move-to", "dups", cwd=library).exit_code == 0
    assert invoke("index", "photos", "--workers", "0", cwd=library).exit_code == 0
    result = invoke("undo", "dups/simsearch-moves.jsonl", cwd=library)
    assert result.exit_code == 0, result.output
    assert "2 files back in the index" in result.stderr
    assert "indexing 1 restored file again (the index no longer held their vectors)" in result.stderr
    assert groups_json(library) == groups


def test_undo_reads_a_crash_left_manifest(library: Path) -> None:
    """A line written for a move that never happened reads as back already; a torn last line is one line of
    its own, and every other file comes back."""
    assert invoke("dedup", "--threshold", THRESHOLD, "--move-to", "dups", cwd=library).exit_code == 0
    manifest = library / "dups" / MANIFEST_NAME
    [first, *_] = read_manifest(manifest)[0]
    never = MoveRecord("move", "never-done", str(library / "photos" / "c.png"), str(library / "dups" / "c.png"),
                       hashlib.sha256((library / "photos" / "c.png").read_bytes()).hexdigest(), 3, first.keeper,
                       False)
    with open(manifest, "a") as handle:
        handle.write(json.dumps(never.to_dict()) + "\n" + '{"action": "move", "from": "/x", "t')
    collection = open_collection(library / ".simsearch")
    report = undo_moves(manifest, collection.index)
    assert len(report.restored) == 3 and [r.move_id for r in report.already_back] == ["never-done"]
    [torn] = report.failed
    assert torn.path == f"{manifest}:5" and torn.reason.startswith("not a move record")


def test_moves_across_file_systems_copy_verify_then_remove(library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`os.link` says EXDEV, as between two file systems: each file is copied, fsynced, read back, linked into
    place, and only then removed; undo comes back the same way."""
    before = digests(library / "photos")
    real_link = os.link

    def across(source: str, destination: str, **options: object) -> None:
        if not os.path.basename(source).startswith("."):  # the copy's temporary, linked into place: same folder
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        real_link(source, destination, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "link", across)
    collection = open_collection(library / ".simsearch")
    assert collection.index is not None
    report = move_duplicates(collection.index, find_groups(library), library / "dups")
    assert len(report.moved) == 3 and report.refused == []
    assert [p.name for p in (library / "dups").iterdir() if p.name.startswith(".")] == [], "no temporary left"
    undone = undo_moves(report.manifest, collection.index)
    assert len(undone.restored) == 3 and undone.failed == []
    assert digests(library / "photos") == before


def test_a_real_second_file_system(library: Path) -> None:
    """/dev/shm, where it is another file system than the test's folder."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK) or shm.stat().st_dev == library.stat().st_dev:
        pytest.skip("no writable /dev/shm on another file system")
    target = Path(os.path.realpath(shm)) / f"simsearch-test-{os.getpid()}-{library.name}"
    try:
        before = digests(library / "photos")
        moved = invoke("dedup", "--threshold", THRESHOLD, "--move-to", str(target), cwd=library)
        assert moved.exit_code == 0 and "moved 3 files" in moved.stderr, moved.output
        assert len(list(target.rglob("*.png"))) == 3
        undone = invoke("undo", str(target / MANIFEST_NAME), cwd=library)
        assert undone.exit_code == 0 and "restored 3 files" in undone.stderr, undone.output
        assert digests(library / "photos") == before
    finally:
        shutil.rmtree(target, ignore_errors=True)


def fake_trash(folder: Path):  # type: ignore[no-untyped-def]
    """A send2trash that keeps a freedesktop trash in `folder`: files/NAME (or `STEM N.EXT` when taken), and
    info/NAME.trashinfo naming the original path."""
    def send(path: str) -> None:
        (folder / "files").mkdir(parents=True, exist_ok=True)
        (folder / "info").mkdir(exist_ok=True)
        stem, extension = os.path.splitext(os.path.basename(path))
        name, n = stem + extension, 0
        while (folder / "files" / name).exists():
            n += 1
            name = f"{stem} {n}{extension}"
        (folder / "info" / f"{name}.trashinfo").write_text(f"[Trash Info]\nPath={path}\n")
        os.rename(path, folder / "files" / name)

    return send


def test_trash_then_undo_with_a_fake_trash(library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import send2trash

    data_home = library / "data"
    monkeypatch.setenv("XDG_DATA_HOME", str(data_home))
    trash = data_home / "Trash"
    (trash / "files").mkdir(parents=True)
    (trash / "files" / "a-copy.png").write_bytes(b"trashed before, by someone else")
    monkeypatch.setattr(send2trash, "send2trash", fake_trash(trash))
    before = digests(library / "photos")
    result = invoke("dedup", "--threshold", THRESHOLD, "--trash", cwd=library)
    assert result.exit_code == 0, result.output
    assert "trashed 3 files (2 exact copies) to the trash" in result.stderr
    assert sorted(p.name for p in (trash / "files").iterdir()) == [
        "IMG_0001_b_crop_q40.png", "a-copy 1.png", "a-copy.png", "a-small.png"]
    records, _ = read_manifest(library / ".simsearch" / TRASH_MANIFEST_NAME)
    assert sorted(Path(r.destination).name for r in records) == [  # type: ignore[arg-type]
        "IMG_0001_b_crop_q40.png", "a-copy 1.png", "a-small.png"], "found by device and inode"
    assert groups_json(library) == []
    undone = invoke("undo", ".simsearch/trash-moves.jsonl", cwd=library)
    assert undone.exit_code == 0 and "restored 3 files" in undone.stderr, undone.output
    assert digests(library / "photos") == before
    assert sorted(p.name for p in (trash / "files").iterdir()) == ["a-copy.png"], "the other trashed file stays"
    assert list((trash / "info").iterdir()) == [], "the restored files' trash-info entries go with them"
    assert len(proposed(library)) == 3


def test_trash_that_cannot_say_where_leaves_undo_to_the_desktop(library: Path, tmp_path_factory: pytest.TempPathFactory
                                                                ) -> None:
    elsewhere = tmp_path_factory.mktemp("system-trash")
    collection = open_collection(library / ".simsearch")
    assert collection.index is not None
    report = trash_duplicates(collection.index, find_groups(library),
                              send=lambda path: shutil.move(path, elsewhere / os.path.basename(path)),
                              trash_folders=lambda path: [])
    assert len(report.moved) == 3 and report.unlocated == 3
    result = invoke("undo", ".simsearch/trash-moves.jsonl", cwd=library)
    assert result.exit_code == 1
    failures = [line for line in result.stderr.splitlines() if line.startswith("not restored")]
    assert len(failures) == 3 and all(line.endswith("sent to the desktop's trash, which did not say where: restore it "
                                                    "from the trash") for line in failures), result.stderr


def test_the_real_send2trash_in_a_home_of_its_own(library: Path) -> None:
    """send2trash's freedesktop trash needs no desktop: HOME and XDG_DATA_HOME point into the test's folder (read
    when send2trash is imported, so in a process of its own)."""
    home = library / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": str(home / "share"), "PYTHONPATH": str(REPO)}
    env.pop("SIMSEARCH_INDEX", None)
    before = digests(library / "photos")

    def simsearch(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cli", *args], cwd=library, env=env, capture_output=True,
                              text=True, timeout=300)

    trashed = simsearch("dedup", "--threshold", THRESHOLD, "--trash")
    assert trashed.returncode == 0 and "trashed 3 files" in trashed.stderr, trashed.stderr
    if home.stat().st_dev != library.stat().st_dev or not (home / "share" / "Trash" / "files").is_dir():
        pytest.skip("send2trash used a trash outside the test's home")
    assert len(list((home / "share" / "Trash" / "files").iterdir())) == 3
    undone = simsearch("undo", ".simsearch/trash-moves.jsonl")
    assert undone.returncode == 0 and "restored 3 files" in undone.stderr, undone.stderr
    assert digests(library / "photos") == before
    assert list((home / "share" / "Trash" / "info").iterdir()) == []


def test_move_options_refuse_what_they_cannot_combine(library: Path) -> None:
    for other in ("--json", "--csv", "--print0", "--stdin"):
        assert_one_line_error(invoke("dedup", "--threshold", THRESHOLD, "--move-to", "dups", other, cwd=library),
                              "give no --json, --csv, --print0 or --stdin")
    assert_one_line_error(invoke("dedup", "--threshold", THRESHOLD, "--move-to", "dups", "--trash", cwd=library),
                          "choose one of --move-to and --trash")
    assert_one_line_error(invoke("undo", "nowhere.jsonl", cwd=library), "no such manifest")
    assert not (library / "dups").exists()


def test_where_files_go() -> None:
    assert destination_for("/p/holiday/a.jpg", ["/p"], "/d") == "/d/holiday/a.jpg"
    assert destination_for("/p/holiday/a.jpg", ["/p/holiday", "/p"], "/d") == "/d/holiday/a.jpg", "the outermost"
    assert destination_for("/p/a.jpg", ["/p/a.jpg"], "/d") == "/d/a.jpg", "a root that is the file itself"
    assert destination_for("/elsewhere/x/a.jpg", ["/p"], "/d") == "/d/elsewhere/x/a.jpg", "outside any root"
    assert destination_for("/pictures/a.jpg", ["/p"], "/d") == "/d/pictures/a.jpg", "a prefix is not a folder"
    assert collection_root(["/p/a/1.jpg", "/p/b/c/2.jpg"]) == "/p"
    assert collection_root(["/p/a/1.jpg"]) == "/p/a"


def test_a_manifest_keeps_file_names_that_are_not_utf8(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9.png")
    record = MoveRecord("move", "1", f"/p/{name}", f"/d/{name}", "0" * 64, 1, "/p/k.png", True)
    (tmp_path / "m.jsonl").write_text(json.dumps(record.to_dict()) + "\n", encoding="utf-8")
    [read], [] = read_manifest(tmp_path / "m.jsonl")
    assert read == record and os.fsencode(read.source) == b"/p/caf\xe9.png"
