"""Incremental indexing: what is decoded, what is reused, what leaves, what is recorded as failed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from conftest import photo, png_header_bomb, run, save_tiny_model
from retrieval.errors import InputPathError, ModelMismatchError
from retrieval.index import SimilarityIndex, create_index, open_index
from retrieval.models.embedding import Embedder
from retrieval.models.model import EmbeddingModel, load_model
from retrieval.store.schema import STATUS_ERROR, ImageRecord
from retrieval.vectors.search import query_files

def nearest(index: SimilarityIndex, model: EmbeddingModel, query: Path, k: int = 1) -> list[str]:
    [result] = query_files(index, Embedder(model), [query], k)
    return [n.path for n in result.neighbours]


def indexed_paths(index: SimilarityIndex) -> set[str]:
    with index.store.reading() as session:
        return set(session.scalars(select(ImageRecord.path).where(ImageRecord.status == "ok")))


def test_first_run_indexes_everything_and_rerun_decodes_nothing(tmp_path: Path, tiny: EmbeddingModel,
                                                                 make_photos) -> None:  # type: ignore[no-untyped-def]
    photos = make_photos(tmp_path / "photos" / "cats", 6) + make_photos(tmp_path / "photos" / "dogs", 4, start=6)
    index = create_index(tmp_path / "idx")
    first = run(index, [tmp_path / "photos"], tiny)
    assert (first.added, first.embedded, first.failed) == (10, 10, 0)
    assert nearest(index, tiny, photos[3]) == [str(photos[3])]
    with index.store.reading() as session:
        labels = {row[0]: row[1] for row in session.execute(select(ImageRecord.path, ImageRecord.label))}
    assert labels[str(photos[0])] == "cats" and labels[str(photos[9])] == "dogs"

    again = run(index, [tmp_path / "photos"], tiny)
    assert (again.unchanged, again.added, again.embedded, again.updated) == (10, 0, 0, 0)


def test_changed_touched_moved_copied_and_deleted_files(tmp_path: Path, tiny: EmbeddingModel, make_photos) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "photos"
    photos = make_photos(root, 8)
    index = create_index(tmp_path / "idx")
    run(index, [root], tiny)

    photo(100).save(photos[0])                      # content changed
    os.utime(photos[1], ns=(1, 10**18))              # touched only
    moved = root / "sub" / "moved.png"
    moved.parent.mkdir()
    shutil.move(photos[2], moved)                    # moved
    copy = root / "copy.png"
    shutil.copy(photos[3], copy)                     # copied
    photos[4].unlink()                               # deleted

    summary = run(index, [root], tiny)
    assert summary.updated == 1
    assert summary.moved == 1
    assert (summary.added, summary.copies) == (1, 1)
    assert summary.removed == 1
    assert summary.embedded == 1, "only the changed file is decoded and embedded again"
    assert summary.unchanged == 5, "4 untouched files and the touched one"

    paths = indexed_paths(index)
    assert str(photos[4]) not in paths and str(photos[2]) not in paths
    assert {str(moved), str(copy), str(photos[3])} <= paths
    assert set(nearest(index, tiny, photos[3], k=2)) == {str(photos[3]), str(copy)}
    with index.store.reading() as session:
        hashes = {row[0]: row[1] for row in session.execute(select(ImageRecord.path, ImageRecord.content_hash))}
    assert hashes[str(copy)] == hashes[str(photos[3])]


def test_rerun_outside_a_root_keeps_other_roots(tmp_path: Path, tiny: EmbeddingModel, make_photos) -> None:  # type: ignore[no-untyped-def]
    a = make_photos(tmp_path / "a", 3)
    b = make_photos(tmp_path / "b", 3, start=3)
    index = create_index(tmp_path / "idx")
    run(index, [tmp_path / "a"], tiny)
    run(index, [tmp_path / "b"], tiny)
    assert indexed_paths(index) == {str(p) for p in a + b}


def build_bad_folder(root: Path) -> tuple[list[Path], list[Path]]:
    """The good and the bad files a real collection throws at the indexer."""
    from PIL import Image

    root.mkdir(parents=True)
    good = []
    exif = Image.Exif()
    exif[0x0112] = 6
    photo(1).save(root / "rotated.jpg", exif=exif)
    photo(2).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray((np.asarray(photo(3).convert("L"), dtype=np.uint16) * 257)).save(root / "deep16.png")
    palette = photo(4).convert("P")
    palette.save(root / "palette.png", transparency=0)
    photo(5).save(root / "ünïcødé 写真.png")
    photo(6).save(root / "frame.gif")
    photo(7).save(root / "scan.tiff")
    photo(8).save(root / "web.webp")
    photo(9).save(root / "plain.bmp")
    good = sorted(p for p in root.iterdir())

    bad = []
    truncated = root / "truncated.jpg"
    photo(10, (256, 256)).save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("this is not an image\n")
    (root / "bomb.png").write_bytes(png_header_bomb(50_000, 50_000))
    (root / "loop.jpg").symlink_to("loop.jpg")
    bad += [truncated, root / "empty.jpg", root / "notes.jpg", root / "bomb.png", root / "loop.jpg"]
    (root / "sub").mkdir()
    (root / "sub" / "back").symlink_to(root)                  # a directory loop: warned, not entered
    (root / "readme.txt").write_text("ignored: not an image name\n")
    return good, bad


def test_bad_files_are_skipped_recorded_and_retried_when_changed(tmp_path: Path, tiny: EmbeddingModel) -> None:
    good, bad = build_bad_folder(tmp_path / "photos")
    index = create_index(tmp_path / "idx")
    summary = run(index, [tmp_path / "photos"], tiny)
    assert summary.failed == len(bad)
    assert indexed_paths(index) == {str(p) for p in good}
    with index.store.reading() as session:
        errors = {row.path: row.error for row in session.execute(
            select(ImageRecord.path, ImageRecord.error).where(ImageRecord.status == STATUS_ERROR))}
    assert set(errors) == {str(p) for p in bad}
    assert "exceeds the limit" in errors[str(tmp_path / "photos" / "bomb.png")]
    assert "loop" in errors[str(tmp_path / "photos" / "loop.jpg")]

    again = run(index, [tmp_path / "photos"], tiny)
    assert (again.failed, again.still_failing, again.embedded) == (0, len(bad), 0)

    photo(50).save(bad[0], format="JPEG")        # the truncated file is replaced by a good one
    fixed = run(index, [tmp_path / "photos"], tiny)
    assert (fixed.updated, fixed.embedded, fixed.still_failing) == (1, 1, len(bad) - 1)
    assert str(bad[0]) in indexed_paths(index)


def test_worker_processes_give_the_same_vectors_as_in_process(tmp_path: Path, tiny: EmbeddingModel, make_photos) -> None:  # type: ignore[no-untyped-def]
    photos = make_photos(tmp_path / "p", 9)
    single = create_index(tmp_path / "one")
    run(single, [tmp_path / "p"], tiny)
    parallel = create_index(tmp_path / "two")
    summary = run(parallel, [tmp_path / "p"], tiny, workers=2)
    assert summary.embedded == 9
    for query in photos[:3]:
        [a] = query_files(single, Embedder(tiny), [query], 9)
        [b] = query_files(parallel, Embedder(tiny), [query], 9)
        assert [n.path for n in a.neighbours] == [n.path for n in b.neighbours]
        np.testing.assert_allclose([n.distance for n in a.neighbours], [n.distance for n in b.neighbours], atol=1e-5)


def test_another_model_is_refused_unless_reembed(tmp_path: Path, tiny: EmbeddingModel, make_photos,  # type: ignore[no-untyped-def]
                                                 db_url: str) -> None:
    """On both backends (a re-embed is the one writer that takes PostgreSQL's lock alone)."""
    photos = make_photos(tmp_path / "p", 5)
    index = create_index(tmp_path / "idx", db_url)
    run(index, [tmp_path / "p"], tiny)
    other = load_model(save_tiny_model(tmp_path / "other.safetensors", seed=1))
    assert other.content_hash != tiny.content_hash
    with pytest.raises(ModelMismatchError, match="--reembed"):
        run(index, [tmp_path / "p"], other)
    assert index.load_model().content_hash == tiny.content_hash

    summary = run(index, [tmp_path / "p"], other, reembed=True)
    assert (summary.reembedded, summary.embedded) == (5, 5)
    reopened = open_index(tmp_path / "idx", db_url)
    assert reopened.load_model().content_hash == other.content_hash
    assert nearest(reopened, other, photos[2]) == [str(photos[2])]
    assert len(reopened.vector_index()) == 5


def test_empty_folder_and_missing_path_are_refused(tmp_path: Path, tiny: EmbeddingModel) -> None:
    (tmp_path / "empty").mkdir()
    index = create_index(tmp_path / "idx")
    with pytest.raises(InputPathError, match="no image files"):
        run(index, [tmp_path / "empty"], tiny)
    with pytest.raises(InputPathError, match="no such file"):
        run(index, [tmp_path / "nowhere"], tiny)


def test_faiss_file_is_rebuilt_when_missing_or_stale(tmp_path: Path, tiny: EmbeddingModel, make_photos) -> None:  # type: ignore[no-untyped-def]
    photos = make_photos(tmp_path / "p", 4)
    index = create_index(tmp_path / "idx")
    run(index, [tmp_path / "p"], tiny)
    [current] = (tmp_path / "idx").glob("vectors-*.faiss")
    stale = current.with_name(current.name.rsplit("-", 1)[0] + "-0.faiss")  # an older generation's name
    current.rename(stale)
    reopened = open_index(tmp_path / "idx")
    assert len(reopened.vector_index()) == 4
    assert nearest(reopened, tiny, photos[1]) == [str(photos[1])]
    assert not stale.exists(), "the stale file is replaced"


def test_a_second_writer_is_refused(tmp_path: Path, tiny: EmbeddingModel, make_photos) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    from conftest import REPO
    from retrieval.errors import IndexUnavailableError

    make_photos(tmp_path / "p", 2)
    create_index(tmp_path / "idx")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from retrieval.index import open_index\n"
         "with open_index(Path(sys.argv[1])).store.writer():\n    print('locked', flush=True); time.sleep(60)",
         str(tmp_path / "idx")], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(IndexUnavailableError, match="another simsearch process"):
            run(open_index(tmp_path / "idx"), [tmp_path / "p"], tiny)
    finally:
        holder.kill()
        holder.wait()
    assert run(open_index(tmp_path / "idx"), [tmp_path / "p"], tiny).added == 2
