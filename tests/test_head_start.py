"""Files decoded while torch and the model load are indexed like the rest."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from indexer import pipeline
from retrieval.index import create_index
from retrieval.models.embedding import Embedder
from retrieval.models.model import EmbeddingModel
from retrieval.sources import head_start
from retrieval.sources.decode import Decoded, Source, decode_source
from retrieval.sources.head_start import HeadStart
from retrieval.sources.images import Preprocessing
from retrieval.sources.scan import scan
from retrieval.sources.workers import DecodedBatch
from retrieval.vectors.search import query_files
from conftest import run

PREP = Preprocessing(size=(32, 32))
MAX_PIXELS = 10_000_000


def works_of(folder: Path) -> list[Source]:
    return [Source(i, path=f.path) for i, f in enumerate(scan([folder]).files)]


def assert_same(decoded: list[Decoded], expected: list[Decoded]) -> None:
    assert [item for item, _ in decoded] == [item for item, _ in expected]
    for (_, pixels), (_, want) in zip(decoded, expected, strict=True):
        assert (pixels is None and want is None) or np.array_equal(pixels, want)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", multiprocessing.get_all_start_methods())
def test_take_returns_the_files_decoded_so_far_in_order(tmp_path: Path, make_photos, method: str,  # type: ignore[no-untyped-def]
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the start method (fork on Linux until Python 3.14, forkserver after, spawn on macOS)."""
    context = multiprocessing.get_context(method)
    monkeypatch.setattr(head_start.multiprocessing, "get_context", lambda: context)
    make_photos(tmp_path / "p", 6)
    (tmp_path / "p" / "broken.png").write_bytes(b"not an image")
    works = works_of(tmp_path / "p")
    expected = [decode_source(work, PREP, MAX_PIXELS) for work in works]
    wait, deadline = 0.0, time.monotonic() + 60
    while True:
        with HeadStart(works, PREP, MAX_PIXELS) as head:
            time.sleep(wait)
            decoded = head.take()
        assert_same(decoded, expected[:len(decoded)])
        if len(decoded) == len(works):
            break
        assert time.monotonic() < deadline, "given time, every file is decoded"
        wait = max(0.1, wait * 2)


def test_a_head_start_offers_a_bounded_prefix(tmp_path: Path, make_photos,  # type: ignore[no-untyped-def]
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the first files go to the process (a short list to send where it is spawned)."""
    monkeypatch.setattr(head_start, "MAX_FILES", 2)
    make_photos(tmp_path / "p", 4)
    works = works_of(tmp_path / "p")
    wait, deadline = 0.2, time.monotonic() + 60
    while True:
        with HeadStart(works, PREP, MAX_PIXELS) as head:
            time.sleep(wait)
            decoded = head.take()
        assert len(decoded) <= 2, "never more than the prefix it was offered"
        if len(decoded) == 2:
            break
        assert time.monotonic() < deadline, "given time, the whole prefix is decoded"
        wait *= 2
    assert [item.key for item, _ in decoded] == [work.key for work in works[:2]], "the first files, in order"
    assert_same(decoded, [decode_source(work, PREP, MAX_PIXELS) for work in works[:len(decoded)]])


def test_the_dataloader_pins_a_batch_for_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The DataLoader's pinning thread calls `pin_memory()` on what the workers return: it must reach the pixels
    (pinning itself needs a GPU build, so here it is recorded instead)."""
    from torch.utils.data._utils.pin_memory import pin_memory

    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda tensor, *_: pinned.append(tensor) or tensor.clone())
    batch = DecodedBatch([], torch.zeros((2, 4, 4, 3), dtype=torch.uint8))
    result = pin_memory(batch)
    assert isinstance(result, DecodedBatch) and result is not batch
    assert len(pinned) == 1 and pinned[0] is batch.pixels


def test_a_head_start_left_untaken_stops(tmp_path: Path, make_photos) -> None:  # type: ignore[no-untyped-def]
    make_photos(tmp_path / "p", 3)
    with HeadStart(works_of(tmp_path / "p"), PREP, MAX_PIXELS) as head:
        process = head._process
    assert not process.is_alive()


def test_files_decoded_early_and_by_the_loader_are_all_indexed_once(
        tmp_path: Path, tiny: EmbeddingModel, make_photos, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    photos = make_photos(tmp_path / "p", 9)

    class ThreeEarly:
        """A head start that decoded the first three files before the model was ready."""

        def __init__(self, sources: list[Source], prep: Preprocessing, max_pixels: int) -> None:
            self.decoded = [decode_source(source, prep, max_pixels) for source in sources[:3]]

        def __enter__(self) -> ThreeEarly:
            return self

        def __exit__(self, *_: object) -> None:
            pass

        def take(self) -> list[Decoded]:
            return self.decoded

    in_process = create_index(tmp_path / "one")
    run(in_process, [tmp_path / "p"], tiny, batch_size=2)
    monkeypatch.setattr(pipeline, "HeadStart", ThreeEarly)
    mixed = create_index(tmp_path / "two")
    summary = run(mixed, [tmp_path / "p"], tiny, batch_size=2, workers=1)
    assert (summary.added, summary.embedded, summary.failed) == (9, 9, 0)
    for query in photos:
        [a] = query_files(in_process, Embedder(tiny), [query], 9)
        [b] = query_files(mixed, Embedder(tiny), [query], 9)
        assert [n.path for n in a.neighbours] == [n.path for n in b.neighbours]
        np.testing.assert_allclose([n.distance for n in a.neighbours], [n.distance for n in b.neighbours], atol=1e-5)
