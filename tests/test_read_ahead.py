"""Decoding runs ahead of inference, and inference takes every core once decoding is done."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from retrieval.sources import embed as inference
from retrieval.sources.embed import embed_decoded
from retrieval.sources.read_ahead import ReadAhead
from retrieval.sources.workers import DecodedBatch

WAIT_SECONDS = 10.0


def counting(n: int, finished: threading.Event, taken: list[int]) -> Iterator[int]:
    for i in range(n):
        taken.append(i)
        yield i
    finished.set()


def test_reads_every_item_in_order_ahead_of_the_consumer() -> None:
    finished, taken = threading.Event(), []
    with ReadAhead(counting(5, finished, taken), depth=10) as ahead:
        items = iter(ahead)
        assert next(items) == 0
        assert finished.wait(WAIT_SECONDS), "the source is read to its end while the consumer holds one item"
        assert [*items] == [1, 2, 3, 4]
        assert ahead.exhausted


def test_holds_at_most_depth_items_and_stops_the_reader_when_left_early() -> None:
    finished, taken = threading.Event(), []
    with ReadAhead(counting(1000, finished, taken), depth=3) as ahead:
        assert next(iter(ahead)) == 0
    assert len(taken) <= 1 + 3 + 1, "the item taken, the queue, and the one waiting to be put"
    assert not finished.is_set() and not ahead.exhausted


def test_an_error_of_the_source_is_raised_in_the_consumer() -> None:
    def failing() -> Iterator[int]:
        yield 1
        raise OSError("worker died")

    with ReadAhead(failing(), depth=4) as ahead, pytest.raises(OSError, match="worker died"):
        assert [*ahead] == [1]


def test_keep_is_applied_to_each_item() -> None:
    with ReadAhead(iter([1, 2]), depth=4, keep=lambda x: x * 10) as ahead:
        assert [*ahead] == [10, 20]


class RecordingEmbedder:
    """Stands in for `Embedder`: records torch's thread count at each batch; the first batch lasts until the
    decoding is over, as a slow model's would."""

    def __init__(self, decoded: threading.Event) -> None:
        from retrieval.sources.images import Preprocessing

        self.started = threading.Event()
        self.decoded = decoded
        self.threads: list[int] = []
        self.model = type("Model", (), {"preprocessing": Preprocessing(size=(4, 4)), "embedding_dim": 2})()

    def embed(self, pixels: torch.Tensor) -> np.ndarray:
        self.threads.append(torch.get_num_threads())
        if len(self.threads) == 1:
            self.started.set()
            assert self.decoded.wait(WAIT_SECONDS)
            threading.Event().wait(0.2)
        return np.zeros((len(pixels), 2), dtype=np.float32)


def test_inference_takes_every_core_once_decoding_is_done(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(inference, "available_cores", lambda: 2)
    decoded = threading.Event()
    embedder = RecordingEmbedder(decoded)

    def batches() -> Iterator[DecodedBatch]:
        for i in range(3):
            if i == 1:
                assert embedder.started.wait(WAIT_SECONDS)
            yield DecodedBatch([], torch.zeros((2, 4, 4, 3), dtype=torch.uint8))
        decoded.set()

    try:
        results = list(embed_decoded(batches(), embedder, workers=1, batch_size=2))  # type: ignore[arg-type]
        assert len(results) == 3
        assert embedder.threads == [1, 2, 2], "one thread beside the decode worker, both cores after it is done"
        assert torch.get_num_threads() == 2, "restored after"
    finally:
        torch.set_num_threads(before)


def test_only_batches_in_shared_memory_are_copied_out() -> None:
    from retrieval.sources.embed import _out_of_shared_memory

    local = DecodedBatch([], torch.zeros((2, 4, 4, 3), dtype=torch.uint8))
    assert _out_of_shared_memory(local) is local
    shared = DecodedBatch([], torch.zeros((2, 4, 4, 3), dtype=torch.uint8).share_memory_())
    moved = _out_of_shared_memory(shared)
    assert not moved.pixels.is_shared() and torch.equal(moved.pixels, shared.pixels)
