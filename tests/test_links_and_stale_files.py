"""A file is its device and inode, not its path; the FAISS file is a cache bound to its database.

Links (a folder reached through a symbolic link, a linked file, hard links) and overlapping paths must never
make one file two images, and so never let dedup propose the last copy of a photo for deletion. A vector file
that does not match its database (another database's, garbage, truncated) is rebuilt, never served.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sqlalchemy import select

from indexer.pipeline import IndexOptions, index_paths
from retrieval.decisions.dedup import index_duplicates
from retrieval.index import SimilarityIndex, create_index, open_index
from retrieval.models.embedding import Embedder
from retrieval.models.model import EmbeddingModel
from retrieval.store.schema import ImageRecord
from retrieval.vectors.search import query_files

FAST = IndexOptions(batch_size=4, workers=0)


def indexed(index: SimilarityIndex) -> list[str]:
    with index.store.reading() as session:
        return sorted(session.scalars(select(ImageRecord.path).where(ImageRecord.status == "ok")))


def proposed(index: SimilarityIndex, threshold: float = 0.01) -> list[tuple[str, list[str]]]:
    return [(g.keeper.path, sorted(o.path for o in g.others)) for g in index_duplicates(index, threshold).groups]


def nearest(index: SimilarityIndex, model: EmbeddingModel, query: Path) -> str:
    [result] = query_files(index, Embedder(model), [query], 1)
    return result.neighbours[0].path


def test_a_folder_reached_through_a_symlink_is_not_indexed_twice(tmp_path: Path, tiny: EmbeddingModel,
                                                                 make_photos) -> None:  # type: ignore[no-untyped-def]
    """The issue's case: `ln -s 2024 d/latest; simsearch dedup d --print0 | xargs -0 rm` removed every copy."""
    photos = make_photos(tmp_path / "d" / "2024", 3)
    (tmp_path / "d" / "latest").symlink_to("2024")
    index = create_index(tmp_path / "idx")
    summary = index_paths(index, [tmp_path / "d"], tiny, FAST)
    assert (summary.added, summary.aliases) == (3, 3)
    assert indexed(index) == [str(p) for p in photos]
    assert proposed(index) == []


def test_a_folder_link_listed_first_and_shorter_is_still_the_alias(tmp_path: Path, tiny: EmbeddingModel,
                                                                   make_photos) -> None:  # type: ignore[no-untyped-def]
    """Each folder is listed once, under its kept path: the real one, though `a` sorts and measures shorter."""
    photos = make_photos(tmp_path / "d" / "2024" / "summer", 2)
    (tmp_path / "d" / "a").symlink_to("2024")
    index = create_index(tmp_path / "idx")
    summary = index_paths(index, [tmp_path / "d"], tiny, FAST)
    assert (summary.added, summary.aliases) == (2, 2)
    assert indexed(index) == [str(p) for p in photos]


def test_links_and_hard_links_are_aliases_and_never_proposed(tmp_path: Path, tiny: EmbeddingModel,
                                                            make_photos) -> None:  # type: ignore[no-untyped-def]
    """A file symlink is never the keeper of its target; a hard link is no second image; a real copy is."""
    root = tmp_path / "d"
    a, b = make_photos(root, 2)
    (root / "0-link.png").symlink_to(a.name)  # sorts and measures shorter than its target: still not kept
    os.link(b, root / "img0001-hard-link.png")
    shutil.copy(b, root / "b-copy.png")
    index = create_index(tmp_path / "idx")
    summary = index_paths(index, [root], tiny, FAST)
    assert summary.aliases == 2
    assert indexed(index) == sorted([str(a), str(b), str(root / "b-copy.png")])
    groups = proposed(index)
    assert groups == [(str(b), [str(root / "b-copy.png")])], "only the real copy may be proposed"


def test_an_alias_indexed_in_a_later_run_adds_nothing(tmp_path: Path, tiny: EmbeddingModel,
                                                      make_photos) -> None:  # type: ignore[no-untyped-def]
    photos = make_photos(tmp_path / "d" / "2024", 3)
    (tmp_path / "d" / "latest").symlink_to("2024")
    index = create_index(tmp_path / "idx")
    index_paths(index, [tmp_path / "d" / "2024"], tiny, FAST)
    later = index_paths(index, [tmp_path / "d" / "latest"], tiny, FAST)
    assert (later.added, later.aliases, later.embedded) == (0, 3, 0)
    assert indexed(index) == [str(p) for p in photos]
    assert proposed(index) == []


def test_a_file_first_indexed_through_a_link_moves_to_its_own_path(tmp_path: Path, tiny: EmbeddingModel,
                                                                   make_photos) -> None:  # type: ignore[no-untyped-def]
    photos = make_photos(tmp_path / "d" / "2024", 2)
    (tmp_path / "d" / "latest").symlink_to("2024")
    index = create_index(tmp_path / "idx")
    index_paths(index, [tmp_path / "d" / "latest"], tiny, FAST)
    assert indexed(index) == [str(tmp_path / "d" / "latest" / p.name) for p in photos]
    whole = index_paths(index, [tmp_path / "d"], tiny, FAST)
    assert (whole.moved, whole.embedded, whole.aliases) == (2, 0, 2)
    assert indexed(index) == [str(p) for p in photos]


def test_overlapping_paths_index_each_file_once(tmp_path: Path, tiny: EmbeddingModel,
                                                make_photos) -> None:  # type: ignore[no-untyped-def]
    """`simsearch index DIR DIR/sub` (an IntegrityError, and nothing indexed, before)."""
    photos = make_photos(tmp_path / "d", 2) + make_photos(tmp_path / "d" / "sub", 2, start=2)
    index = create_index(tmp_path / "idx")
    summary = index_paths(index, [tmp_path / "d", tmp_path / "d" / "sub", tmp_path / "d"], tiny, FAST)
    assert (summary.added, summary.aliases) == (4, 0)
    assert indexed(index) == sorted(str(p) for p in photos)


def test_a_deleted_file_is_neither_kept_nor_proposed(tmp_path: Path, tiny: EmbeddingModel,
                                                     make_photos) -> None:  # type: ignore[no-untyped-def]
    [a] = make_photos(tmp_path / "d", 1)
    copies = [tmp_path / "d" / f"copy{i}.png" for i in range(2)]
    for copy in copies:
        shutil.copy(a, copy)
    index = create_index(tmp_path / "idx")
    index_paths(index, [tmp_path / "d"], tiny, FAST)
    assert len(proposed(index)[0][1]) == 2
    copies[0].unlink()  # since it was indexed
    assert proposed(index) == [(str(a), [str(copies[1])])]
    a.unlink()
    assert proposed(index) == [], "the last file of its content is never proposed"


def test_a_vector_file_of_another_database_is_never_served(tmp_path: Path, tiny: EmbeddingModel,
                                                           make_photos) -> None:  # type: ignore[no-untyped-def]
    """The issue's case: delete index.db, re-index a folder with as many files: the old FAISS file answered."""
    old = make_photos(tmp_path / "old", 4)
    new = make_photos(tmp_path / "new", 4, start=10)
    root = tmp_path / "idx"
    index_paths(create_index(root), [tmp_path / "old"], tiny, FAST)
    old_vectors = {p.name: p.read_bytes() for p in root.glob("vectors-*.faiss")}
    for name in ("index.db", "index.db-wal", "index.db-shm"):
        (root / name).unlink(missing_ok=True)
    index = create_index(root)
    index_paths(index, [tmp_path / "new"], tiny, FAST)
    for name, data in old_vectors.items():  # the old file, put back (from a backup, say)
        (root / name).write_bytes(data)
    reopened = open_index(root)
    assert [nearest(reopened, tiny, p) for p in new] == [str(p) for p in new]
    assert all(nearest(reopened, tiny, p) != str(p) for p in old)


def test_garbage_and_truncated_vector_files_are_rebuilt(tmp_path: Path, tiny: EmbeddingModel,
                                                        make_photos) -> None:  # type: ignore[no-untyped-def]
    photos = make_photos(tmp_path / "p", 5)
    root = tmp_path / "idx"
    index_paths(create_index(root), [tmp_path / "p"], tiny, FAST)
    [vector_file] = root.glob("vectors-*.faiss")
    whole = vector_file.read_bytes()
    for damaged in (b"garbage" * 50, whole[: len(whole) // 2], b""):
        vector_file.write_bytes(damaged)
        assert nearest(open_index(root), tiny, photos[2]) == str(photos[2])
    vector_file.write_bytes(b"garbage")
    summary = index_paths(open_index(root), [tmp_path / "p"], tiny, FAST)
    assert summary.unchanged == 5
    assert vector_file.read_bytes() == whole, "the index run rebuilt the file"


def test_a_vector_file_that_holds_other_vectors_is_rebuilt(tmp_path: Path, tiny: EmbeddingModel,
                                                           make_photos) -> None:  # type: ignore[no-untyped-def]
    """A readable file under the right name that does not hold what the database serves."""
    photos = make_photos(tmp_path / "p", 4)
    root = tmp_path / "idx"
    index_paths(create_index(root), [tmp_path / "p"], tiny, FAST)
    [vector_file] = root.glob("vectors-*.faiss")
    from retrieval.store.vector_index import VectorIndex

    import numpy as np

    VectorIndex.build(16, np.arange(2), np.eye(2, 16, dtype=np.float32)).save(vector_file)
    reopened = open_index(root)
    assert len(reopened.vector_index()) == 4
    assert nearest(reopened, tiny, photos[3]) == str(photos[3])


def test_orphaned_temporaries_are_cleaned_when_the_index_opens(tmp_path: Path, tiny: EmbeddingModel,
                                                               make_photos) -> None:  # type: ignore[no-untyped-def]
    make_photos(tmp_path / "p", 2)
    root = tmp_path / "idx"
    index_paths(create_index(root), [tmp_path / "p"], tiny, FAST)
    dead_pid = 2 ** 22 + 12345  # above Linux's pid_max default: no such process
    orphans = [root / f".vectors-{'ab' * 16}-3.faiss.{dead_pid}.tmp",
               root / "models" / f".{'c' * 64}.safetensors.{dead_pid}.tmp"]
    live = root / f".vectors-{'ab' * 16}-4.faiss.{os.getpid()}.tmp"  # a writer at work beside us
    foreign = root / f".notes.txt.{dead_pid}.tmp"  # not a name simsearch writes: another program's
    for path in (*orphans, live, foreign):
        path.write_bytes(b"partial")
    open_index(root)
    assert [p.exists() for p in orphans] == [False, False]
    assert live.exists() and foreign.exists()


def test_streamed_inputs_are_never_duplicates_of_their_own_file(tmp_path: Path, tiny: EmbeddingModel,
                                                                 make_photos) -> None:  # type: ignore[no-untyped-def]
    """`find new/ | simsearch dedup --stdin`: an input indexed through a link, or given twice, is no duplicate
    of itself (the user would delete its only copy); a real copy is."""
    from retrieval.collection import Collection

    [a, b] = make_photos(tmp_path / "d" / "2024", 2)
    (tmp_path / "d" / "latest").symlink_to("2024")
    index = create_index(tmp_path / "idx")
    index_paths(index, [tmp_path / "d" / "latest"], tiny, FAST)
    copy = tmp_path / "copy.png"
    shutil.copy(b, copy)
    inputs = [str(a), str(tmp_path / "d" / "latest" / a.name), str(a), str(copy)]
    matches = list(Collection(index, tiny).stream_duplicates(inputs, threshold=0.01))
    assert [m.duplicate_of for m in matches] == [None, None, None, str(tmp_path / "d" / "latest" / b.name)]


def test_a_file_replaced_or_rewritten_since_indexing_is_neither_kept_nor_proposed(
        tmp_path: Path, tiny: EmbeddingModel, make_photos) -> None:  # type: ignore[no-untyped-def]
    """The keeper replaced by another photo must not leave its copy proposed as the duplicate of that photo: the
    copy would be the last of its content. The same for a copy rewritten in place."""
    [a, other] = make_photos(tmp_path / "src", 2)
    root = tmp_path / "d"
    root.mkdir()
    shutil.copy(a, root / "a.png")
    shutil.copy(a, root / "b.png")
    index = create_index(tmp_path / "idx")
    index_paths(index, [root], tiny, FAST)
    assert len(proposed(index)) == 1
    replacement = tmp_path / "replacement.png"
    shutil.copy(other, replacement)
    os.replace(replacement, root / "a.png")  # another photo under the keeper's name (a new inode)
    assert proposed(index) == [], "a.png is not the file indexed there any more: b.png is the last copy"
    shutil.copy(a, root / "a.png")
    index_paths(index, [root], tiny, FAST)
    assert len(proposed(index)) == 1
    with open(root / "b.png", "r+b") as handle:  # rewritten in place: the same inode, another size
        handle.write(other.read_bytes())
    assert proposed(index) == []


def test_two_copies_streamed_one_after_the_other_are_not_each_others_duplicates(
        tmp_path: Path, tiny: EmbeddingModel, make_photos) -> None:  # type: ignore[no-untyped-def]
    """`... | simsearch dedup --stdin | jq 'select(.duplicate_of).path' | xargs rm` must keep one of them."""
    from retrieval.collection import Collection

    [a] = make_photos(tmp_path / "d", 1)
    b = tmp_path / "d" / "b.png"
    shutil.copy(a, b)
    index = create_index(tmp_path / "idx")
    index_paths(index, [tmp_path / "d"], tiny, FAST)
    matches = list(Collection(index, tiny).stream_duplicates([str(a), str(b)], threshold=0.01))
    assert [m.duplicate_of for m in matches] == [str(b), None]
    c, d = tmp_path / "c.png", tmp_path / "e.png"  # neither indexed
    shutil.copy(a, c)
    shutil.copy(a, d)
    fresh = create_index(tmp_path / "b-only-idx")
    index_paths(fresh, [b], tiny, FAST)
    matches = list(Collection(fresh, tiny).stream_duplicates([str(c), str(b), str(d)], threshold=0.01))
    assert [m.duplicate_of for m in matches] == [str(b), None, str(b)], \
        "a duplicate is never the original of a later input, and the indexed copy stays the original"
