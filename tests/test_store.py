"""The index store, through its interface only, on SQLite and on a real PostgreSQL server (`db_url`)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from retrieval.errors import IndexUnavailableError, IndexWriteError
from retrieval.index import SimilarityIndex, create_index
from retrieval.store.index_store import ImageChange, IndexStore, copy_index_database
from retrieval.store.schema import STATUS_ERROR, STATUS_OK

DIM = 8


def digest(seed: int) -> str:
    """The content hash of test content `seed`: 64 lower-case hex digits, as the store reads hashes back."""
    return f"{seed:064x}"


def model_hash(name: str) -> str:
    """A model's content hash made from its name (64 lower-case hex digits)."""
    return name.encode().hex().ljust(64, "0")


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def model_id(store: IndexStore, name: str = "m") -> int:
    record = store.register_model(model_hash(name), name, "{}", DIM)
    store.serve_first_model(record.id)
    return record.id


def indexed(path: str, seed: int, row_id: int | None = None) -> ImageChange:
    return ImageChange(path, STATUS_OK, row_id, size=1, mtime_ns=1, content_hash=digest(seed), width=4, height=3,
                       vector_hash=digest(seed))


def vector(seed: int) -> tuple[str, bytes]:
    return digest(seed), unit(seed).tobytes()


def nearest(index: SimilarityIndex, seed: int) -> str:
    [[first, *_]] = index.search(unit(seed)[None], 2)
    return first.path


@pytest.fixture
def index(tmp_path: Path, db_url: str) -> SimilarityIndex:
    return create_index(tmp_path / "idx", db_url)


def test_a_batch_of_images_and_vectors_is_searchable(index: SimilarityIndex) -> None:
    store = index.store
    model = model_id(store)
    store.write_images(model, [indexed(f"/p/{i}.png", i) for i in range(5)], [vector(i) for i in range(5)])
    assert sorted(store.known_images(["/p"], model, everything=False)) == [f"/p/{i}.png" for i in range(5)]
    assert all(row.has_target_vector for row in store.known_images(["/p"], model, False).values())
    assert [nearest(index, i) for i in range(5)] == [f"/p/{i}.png" for i in range(5)]
    assert store.stored_hashes(model, [digest(1), digest(9)]) == {digest(1)}


def test_writes_are_upserts_one_row_per_path_and_one_vector_per_content(index: SimilarityIndex) -> None:
    store = index.store
    model = model_id(store)
    store.write_images(model, [indexed("/p/a.png", 1)], [vector(1)])
    store.write_images(model, [indexed("/p/a.png", 2), indexed("/p/copy.png", 2)], [vector(2), vector(2)])
    rows = store.known_images(["/p"], model, False)
    assert sorted(rows) == ["/p/a.png", "/p/copy.png"]
    assert rows["/p/a.png"].content_hash == digest(2)
    assert len(index.vector_index()) == 1, "one vector for the content both files hold; h1's is no longer served"
    assert {image.path for image in index.search(unit(2)[None], 2)[0]} == {"/p/a.png", "/p/copy.png"}


def test_a_failed_file_is_recorded_and_never_served(index: SimilarityIndex) -> None:
    store = index.store
    model = model_id(store)
    store.write_images(model, [indexed("/p/a.png", 1)], [vector(1)])
    row = store.known_images(["/p"], model, False)["/p/a.png"]
    store.write_images(model, [ImageChange("/p/a.png", STATUS_ERROR, row.id, error="truncated file")])
    after = store.known_images(["/p"], model, False)["/p/a.png"]
    assert (after.status, after.error, after.has_target_vector) == (STATUS_ERROR, "truncated file", False)
    assert len(index.vector_index()) == 0


def test_removed_images_leave_search_and_unused_vectors_go_at_the_end_of_a_run(index: SimilarityIndex) -> None:
    store = index.store
    model = model_id(store)
    store.write_images(model, [indexed(f"/p/{i}.png", i) for i in range(3)], [vector(i) for i in range(3)])
    rows = store.known_images(["/p"], model, False)
    store.remove_images([rows["/p/0.png"].id])
    assert len(index.vector_index()) == 2
    assert store.stored_hashes(model, [digest(0)]) == {digest(0)}, "kept until the run ends: a move may reuse it"
    with store.writer():
        assert store.finish(model, serving=True)
    assert store.stored_hashes(model, [digest(0), digest(1)]) == {digest(1)}


def test_switching_the_served_model_waits_for_every_vector(index: SimilarityIndex) -> None:
    store = index.store
    old = model_id(store, "old")
    store.write_images(old, [indexed(f"/p/{i}.png", i) for i in range(2)], [vector(i) for i in range(2)])
    new = store.register_model(model_hash("new"), "new", "{}", DIM).id
    rows = store.known_images(["/p"], new, everything=True)
    first = ImageChange("/p/0.png", STATUS_OK, rows["/p/0.png"].id, size=1, mtime_ns=1, content_hash=digest(0),
                        vector_hash=digest(0), keep_vector=True)
    store.write_images(new, [first], [(digest(0), unit(10).tobytes())])
    with store.writer(exclusive=True):
        assert not store.finish(new, serving=False), "one image still lacks a vector of the new model"
        assert store.served_model().id == old  # type: ignore[union-attr]
        second = ImageChange("/p/1.png", STATUS_OK, rows["/p/1.png"].id, size=1, mtime_ns=1, content_hash=digest(1),
                             vector_hash=digest(1), keep_vector=True)
        store.write_images(new, [second], [(digest(1), unit(11).tobytes())])
        assert store.finish(new, serving=False)
    assert store.served_model().id == new  # type: ignore[union-attr]
    assert nearest(index, 10) == "/p/0.png" and nearest(index, 11) == "/p/1.png"
    assert store.stored_hashes(old, [digest(0), digest(1)]) == set(), "the old model's vectors are dropped"


def test_the_first_model_served_stays_served(index: SimilarityIndex) -> None:
    store = index.store
    first = model_id(store, "first")
    second = store.register_model(model_hash("second"), "second", "{}", DIM)
    assert store.serve_first_model(second.id).id == first, "a second writer's first model does not take over"
    assert store.register_model(model_hash("first"), "first", "{}", DIM).id == first, "registered once"


def test_calibrations_are_kept_per_model_newest_first(index: SimilarityIndex) -> None:
    store = index.store
    model = model_id(store)
    store.save_calibration(model, model_hash("m"), "accuracy", 0.5, {"levels": []})
    store.save_calibration(model, model_hash("m"), "eer", 0.7, {"levels": [{"precision": 0.99, "threshold": 0.6,
                                                                          "recall": 0.8}]})
    latest = store.latest_calibration(model_hash("m"))
    assert latest is not None and (latest.criterion, latest.threshold) == ("eer", 0.7)
    assert [level.precision for level in latest.levels] == [0.99]
    assert store.latest_calibration(model_hash("x")) is None


def test_a_reader_sees_one_snapshot_whatever_commits_meanwhile(index: SimilarityIndex) -> None:
    store = index.store
    model = model_id(store)
    store.write_images(model, [indexed("/p/0.png", 0)], [vector(0)])
    with store.reading() as session:
        state = store.state(session)
        before = len(store.served_ids(session, state))
        store.write_images(model, [indexed("/p/1.png", 1)], [vector(1)])  # another transaction commits
        assert len(store.served_ids(session, state)) == before == 1
    with store.reading() as session:
        assert len(store.served_ids(session, store.state(session))) == 2


def test_a_reader_never_sees_half_a_batch(index: SimilarityIndex) -> None:
    store = index.store
    model = model_id(store)
    seen: list[int] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            with store.reading() as session:
                seen.append(len(store.served_ids(session, store.state(session))))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for batch in range(8):
            seeds = range(batch * 10, batch * 10 + 10)
            store.write_images(model, [indexed(f"/p/{s}.png", s) for s in seeds], [vector(s) for s in seeds])
    finally:
        done.set()
        reader.join()
    assert seen and all(count % 10 == 0 for count in seen), sorted(set(seen))


def test_a_copy_answers_queries_as_the_original_does(tmp_path: Path, index: SimilarityIndex, db_url: str,
                                                    request: pytest.FixtureRequest) -> None:
    """To the other backend and back, ids kept, the served model and calibrations with it."""
    store = index.store
    model = model_id(store)
    store.write_images(model, [indexed(f"/p/{i}.png", i) for i in range(20)], [vector(i) for i in range(20)])
    store.write_images(model, [ImageChange("/p/bad.png", STATUS_ERROR, error="not an image")])
    store.save_calibration(model, model_hash("m"), "accuracy", 0.5, {})
    other_url = (f"sqlite:///{tmp_path / 'copy.db'}" if db_url.startswith("postgresql")
                 else str(request.getfixturevalue("postgres_url")))
    copy = create_index(tmp_path / "idx", other_url)
    copied = copy_index_database(store, copy.store)
    assert (copied.images, copied.vectors, copied.models, copied.calibrations) == (21, 20, 1, 1)
    for seed in range(20):
        assert copy.search(unit(seed)[None], 3) == index.search(unit(seed)[None], 3)
    assert copy.store.latest_calibration(model_hash("m")).threshold == 0.5  # type: ignore[union-attr]
    back = create_index(tmp_path / "back", f"sqlite:///{tmp_path / 'back.db'}")
    copy_index_database(copy.store, back.store)
    assert back.search(unit(3)[None], 3) == index.search(unit(3)[None], 3)
    copy.store.write_images(model, [indexed("/p/new.png", 99)], [vector(99)])  # new ids after the copied ones
    assert nearest(copy, 99) == "/p/new.png"
    with pytest.raises(IndexUnavailableError, match="already holds an index"):
        copy_index_database(store, copy.store)


def test_a_batch_the_database_refuses_is_an_index_write_error_and_leaves_nothing(index: SimilarityIndex) -> None:
    """One row breaks a constraint: the whole batch, its vectors included, is rolled back."""
    store = index.store
    model = model_id(store)
    bad = ImageChange("/p/bad.png", "bogus", error="x")  # the status check constraint refuses it
    with pytest.raises(IndexWriteError, match="what was committed before is kept"):
        store.write_images(model, [indexed("/p/a.png", 1), bad], [vector(1)])
    assert store.known_images(["/p"], model, False) == {}
    assert store.stored_hashes(model, [digest(1)]) == set()
    store.write_images(model, [indexed("/p/a.png", 1)], [vector(1)])  # the store is usable after
    assert nearest(index, 1) == "/p/a.png"
