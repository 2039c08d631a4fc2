"""The one service the CLI, the server and the Python API call: a query by file, by an embedding and by an indexed
path answers the same; an empty index says so; adding, forgetting and calibrating leave an index as a user expects
(a failed first run leaves none behind)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from conftest import INDEX_FAST
from indexer.adding import add_paths
from retrieval import open_collection
from retrieval.collection import Collection
from retrieval.decisions.calibration_data import calibration_distances
from retrieval.decisions.index_calibration import calibrate_and_store, calibration_collection, existing_index
from retrieval.errors import IndexNotFoundError, InputPathError, OutputWriteError
from retrieval.index import create_index
from retrieval.models.model import EmbeddingModel
from retrieval.new_index import index_to_fill

DISTANCE_TOLERANCE = 1e-5


@pytest.fixture
def indexed(tmp_path: Path, tiny: EmbeddingModel, make_photos: Callable[..., list[Path]]) -> tuple[Path, list[Path]]:
    photos = make_photos(tmp_path / "photos", 4)
    root, summary = add_paths([tmp_path / "photos"], tmp_path / "index", None, tiny, INDEX_FAST)
    assert (root, summary.added) == (tmp_path / "index", 4)
    return root, photos


def test_a_query_by_file_by_embedding_and_by_indexed_path_finds_the_same(indexed: tuple[Path, list[Path]]) -> None:
    root, photos = indexed
    collection = open_collection(root)
    [by_file] = collection.query([photos[1]], k=3)
    by_vector = collection.query_vector("upload", collection.embed_files([photos[1]])[0], k=3)
    by_path = collection.query_indexed(str(photos[1]), k=3)
    assert by_path is not None and by_vector.query == "upload"
    for result in (by_vector, by_path):
        assert [n.path for n in result.neighbours] == [n.path for n in by_file.neighbours]
        assert np.allclose([n.distance for n in result.neighbours], [n.distance for n in by_file.neighbours],
                           atol=DISTANCE_TOLERANCE)
    assert by_file.neighbours[0].path == str(photos[1])
    assert collection.query_indexed(str(root / "not-indexed.png")) is None


def test_querying_an_index_without_images_says_so(tmp_path: Path, make_photos: Callable[..., list[Path]]) -> None:
    [query] = make_photos(tmp_path / "queries", 1)
    create_index(tmp_path / "index")
    with pytest.raises(IndexNotFoundError, match="holds no images yet"):
        open_collection(tmp_path / "index").query([query])


def test_removing_forgets_indexed_paths_and_leaves_the_files(indexed: tuple[Path, list[Path]]) -> None:
    root, photos = indexed
    collection = open_collection(root)
    removed, not_indexed = collection.remove([photos[0], root / "never.png"])
    assert (removed, not_indexed) == (1, [str(root / "never.png")])
    assert photos[0].exists()
    assert str(photos[0]) not in [n.path for n in collection.query([photos[0]], k=4)[0].neighbours]


def test_adding_a_missing_path_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(InputPathError, match="no such file or directory"):
        add_paths([tmp_path / "nowhere"], tmp_path / "index")
    assert not (tmp_path / "index").exists()


def test_a_new_index_that_records_nothing_is_removed_but_an_existing_one_kept(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputPathError, match="no image files"):
        add_paths([tmp_path / "empty"], tmp_path / "index")
    assert not (tmp_path / "index").exists()
    create_index(tmp_path / "kept")
    with pytest.raises(InputPathError), index_to_fill(tmp_path / "kept"):
        raise InputPathError("failed")
    assert (tmp_path / "kept").is_dir()


def test_calibrating_without_an_index_stores_the_calibration_in_a_new_one(labelled: Path,
                                                                          tiny: EmbeddingModel) -> None:
    assert existing_index(labelled / "index", None) is None
    collection = calibration_collection(None, tiny)
    pairs = calibration_distances(labelled / "data", collection.embedder)
    run = calibrate_and_store(collection, pairs.same, pairs.different, "accuracy", None, bootstrap=0, seed=0,
                              plot=None, index_dir=labelled / "index", db=None)
    assert run.index_root == labelled / "index" and run.plot.is_file()
    stored = Collection(existing_index(labelled / "index", None), tiny).calibration()
    assert stored is not None and stored.threshold == pytest.approx(run.result.threshold)


def test_a_calibration_that_cannot_be_written_leaves_no_new_index(labelled: Path, tiny: EmbeddingModel) -> None:
    collection = calibration_collection(None, tiny)
    pairs = calibration_distances(labelled / "data", collection.embedder)
    (labelled / "plot.png").mkdir()  # a folder where the plot should go
    with pytest.raises(OutputWriteError):
        calibrate_and_store(collection, pairs.same, pairs.different, "accuracy", None, bootstrap=0, seed=0,
                            plot=labelled / "plot.png", index_dir=labelled / "index", db=None)
    assert not (labelled / "index").exists()
