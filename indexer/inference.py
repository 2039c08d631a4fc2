"""Embed decoded batches as the decode workers deliver them, sharing the cores with those workers."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch

from indexer.loading import LoadedBatch, available_cores
from indexer.read_ahead import ReadAhead
from retrieval.embedding import Embedder

READ_AHEAD_BYTES = 256 << 20
"""Decoded pixels held for inference at most (about 1,700 images at 224 x 224)."""


class InferenceThreads:
    """torch's intra-op threads for inference beside `workers` decode processes.

    While they decode, inference gets the cores they leave (at least one): more threads than cores makes
    decoding and inference wait on each other (on 2 cores with one decode worker, one inference thread indexes
    about a quarter faster than two). Once decoding is done, `decoding_finished` gives inference every core
    torch would use on its own. Leaving the block restores torch's thread count.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._before = torch.get_num_threads()

    def __enter__(self) -> InferenceThreads:
        torch.set_num_threads(max(1, available_cores() - self.workers))
        return self

    def __exit__(self, *_: object) -> None:
        torch.set_num_threads(self._before)

    def decoding_finished(self) -> None:
        if torch.get_num_threads() != self._before:
            torch.set_num_threads(self._before)


def _out_of_shared_memory(batch: LoadedBatch) -> LoadedBatch:
    """A batch straight from a worker lives in shared memory (a container's /dev/shm is often 64 MB); a batch
    held for later moves to the process's own. Batches decoded in this process, or already copied into pinned
    memory for a GPU, stay as they are."""
    if not batch.pixels.is_shared():
        return batch
    return dataclasses.replace(batch, pixels=batch.pixels.clone())


def embed_as_decoded(batches: Iterator[LoadedBatch], embedder: Embedder, workers: int,
                     batch_size: int) -> Iterator[tuple[LoadedBatch, np.ndarray]]:
    """Each decoded batch with its embeddings (one row per decoded item, in order).

    The batches are read ahead of inference (up to `READ_AHEAD_BYTES`), so decoding runs at its own pace even
    while inference is slower, and inference takes every core once the last batch is decoded (`InferenceThreads`).
    """
    prep = embedder.model.preprocessing
    depth = READ_AHEAD_BYTES // (batch_size * prep.size[0] * prep.size[1] * prep.channels)
    with InferenceThreads(workers) as threads, ReadAhead(batches, depth, _out_of_shared_memory) as ahead:
        for batch in ahead:
            if ahead.exhausted:
                threads.decoding_finished()
            vectors = (embedder.embed(batch.pixels) if len(batch.pixels)
                       else np.empty((0, embedder.model.embedding_dim), dtype=np.float32))
            yield batch, vectors
