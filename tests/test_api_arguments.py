"""The Python API refuses a wrong argument at once, with a message that names it; a path that is not a readable
regular file is reported as what it is, and a FIFO is never opened."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import invoke, photo
from retrieval import Collection, open_collection
from retrieval.errors import SimsearchError

T = TypeVar("T")

DETERMINISTIC = settings(derandomize=True, database=None,
                         suppress_health_check=[HealthCheck.function_scoped_fixture])
"""The same examples on every run, and nothing written to .hypothesis/; the function-scoped fixture `photos` is the
same for every example (it sets the working directory)."""


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, tiny_model_file: Path) -> tuple[Path, Collection]:
    """An index of three photos, made once for the module: its folder and the index opened."""
    root = tmp_path_factory.mktemp("api")
    (root / "p").mkdir()
    for i in range(3):
        photo(i).save(root / "p" / f"{i}.png")
    assert invoke("index", "p", "--model", str(tiny_model_file), "--workers", "0", cwd=root).exit_code == 0
    return root, open_collection(root / ".simsearch")


@pytest.fixture
def photos(indexed: tuple[Path, Collection], monkeypatch: pytest.MonkeyPatch) -> Collection:
    """The module's index, with the working directory its folder while the test runs (and restored after it)."""
    root, collection = indexed
    monkeypatch.chdir(root)
    return collection


def within(seconds: float, call: Callable[[], T], fifo: Path | None = None) -> T:
    """`call()` (its value, or its exception raised here), which must be done within `seconds`; if it is stuck
    opening `fifo`, a writer comes to unblock it and the test fails."""
    outcome: list[T] = []
    raised: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    stuck = thread.is_alive()
    if stuck and fifo is not None:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(seconds)
    assert not stuck, f"not done within {seconds} s: it opened the FIFO"
    if raised:
        raise raised[0]
    return outcome[0]


@pytest.mark.parametrize("paths", ["p/0.png", Path("p/0.png"), b"p/0.png"])
def test_a_single_path_for_a_list_of_paths_is_refused(photos: Collection, paths: object) -> None:
    for call in (lambda: photos.query(paths), lambda: photos.embed_files(paths),  # type: ignore[arg-type]
                 lambda: photos.classify({"a": ["p/0.png"]}, paths),  # type: ignore[arg-type]
                 lambda: photos.classify({"a": paths}, ["p/0.png"]),  # type: ignore[dict-item]
                 lambda: photos.dedup(0.1, paths),  # type: ignore[arg-type]
                 lambda: photos.stream_duplicates(paths, 0.1)):  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="list of paths, not a single"):
            call()


def test_paths_of_the_wrong_type_are_refused(photos: Collection) -> None:
    with pytest.raises(TypeError, match="got int 3"):
        photos.query(["p/0.png", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="not bytes"):
        photos.verify(b"p/0.png", "p/1.png", threshold=0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="support must map"):
        photos.classify([["p/0.png"]], ["p/1.png"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="support class 'b' has no images"):
        photos.classify({"a": ["p/0.png"], "b": []}, ["p/1.png"])
    with pytest.raises(TypeError, match="got int 7"):
        list(photos.stream_duplicates(["p/0.png", 7], 0.1))  # type: ignore[list-item]


@DETERMINISTIC
@given(st.integers(max_value=0))
def test_k_below_1_is_a_value_error(photos: Collection, k: int) -> None:
    with pytest.raises(ValueError, match=f"k must be at least 1, got {k}"):
        photos.query(["p/0.png"], k)


@pytest.mark.parametrize("k", [2.0, True, "3", None, 1.5])
def test_k_that_is_not_an_int_is_a_type_error(photos: Collection, k: object) -> None:
    with pytest.raises(TypeError, match="k must be an int"):
        photos.query(["p/0.png"], k)  # type: ignore[arg-type]


def test_k_may_be_any_integer_type(photos: Collection) -> None:
    (result,) = photos.query([Path("p/0.png")], np.int64(2))  # type: ignore[arg-type]
    assert [n.rank for n in result.neighbours] == [1, 2] and result.neighbours[0].path.endswith("0.png")


@DETERMINISTIC
@given(st.one_of(st.floats(max_value=-1e-300), st.just(math.nan), st.just(math.inf), st.just(-math.inf),
                 st.integers(max_value=-1)))
def test_a_negative_or_not_finite_threshold_is_a_value_error_everywhere(photos: Collection, threshold: float) -> None:
    for call in (lambda: photos.threshold(threshold), lambda: photos.verify("p/0.png", "p/1.png", threshold),
                 lambda: photos.dedup(threshold), lambda: photos.classify({"a": ["p/0.png"]}, ["p/1.png"], False,
                                                                           threshold),
                 lambda: photos.stream_duplicates(["p/0.png"], threshold)):
        with pytest.raises(ValueError, match="threshold must be a finite squared-L2 distance of at least 0") as raised:
            call()
        assert isinstance(raised.value, SimsearchError), "the command line shows it as a one-line error"


@DETERMINISTIC
@given(st.floats(min_value=0.0, allow_infinity=False))
def test_any_finite_threshold_of_at_least_0_is_taken(photos: Collection, threshold: float) -> None:
    assert photos.threshold(threshold) == threshold


@pytest.mark.parametrize("threshold", ["0.5", True, [0.5]])
def test_a_threshold_that_is_not_a_number_is_a_type_error(photos: Collection, threshold: object) -> None:
    with pytest.raises(TypeError, match="threshold must be a number"):
        photos.verify("p/0.png", "p/1.png", threshold)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="threshold must be a number"):
        photos.dedup(threshold)  # type: ignore[arg-type]


def test_a_directory_a_fifo_and_a_missing_file_are_told_apart(photos: Collection, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    asked = [fifo, tmp_path / "folder.png", tmp_path / "missing.png", tmp_path / "dangling.png", Path("p/1.png")]
    results = within(30, lambda: photos.query(asked, k=1), fifo)
    assert [r.error for r in results] == ["is a FIFO, not a regular file", "is a directory", "no such file",
                                          "broken symbolic link", None]
    with pytest.raises(SimsearchError, match="pipe.png: is a FIFO, not a regular file"):
        within(30, lambda: photos.verify(fifo, "p/1.png", threshold=0.1), fifo)
    (classified,) = within(30, lambda: photos.classify({"a": ["p/0.png"]}, [fifo]), fifo)
    assert classified.error == f"{fifo}: is a FIFO, not a regular file"
    (streamed,) = within(30, lambda: list(photos.stream_duplicates([str(tmp_path / "folder.png")], 0.1)), fifo)
    assert streamed.error is not None and streamed.error.endswith("folder.png: is a directory")
