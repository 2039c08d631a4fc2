"""Embed decoded batches as they arrive, sharing the cores with the decode workers; and the public calls that
decode and embed a list of inputs."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from retrieval.errors import DecodeError
from retrieval.models.embedding import Embedder
from retrieval.sources.decode import Source, SourceResult
from retrieval.sources.images import DEFAULT_MAX_PIXELS
from retrieval.sources.read_ahead import ReadAhead
from retrieval.sources.workers import DecodedBatch, available_cores, decoding_loader, default_workers

BATCH_SIZE = 32
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


def _out_of_shared_memory(batch: DecodedBatch) -> DecodedBatch:
    """A batch straight from a worker lives in shared memory (a container's /dev/shm is often 64 MB); a batch
    held for later moves to the process's own. Batches decoded in this process, or already copied into pinned
    memory for a GPU, stay as they are."""
    if not batch.pixels.is_shared():
        return batch
    return dataclasses.replace(batch, pixels=batch.pixels.clone())


def _with_vectors(batch: DecodedBatch, vectors: np.ndarray) -> list[SourceResult]:
    rows = iter(vectors)
    return [result if result.error is not None else dataclasses.replace(result, vector=next(rows))
            for result in batch.results]


def embed_decoded(batches: Iterable[DecodedBatch], embedder: Embedder, *, workers: int,
                  batch_size: int) -> Iterator[list[SourceResult]]:
    """The results of each decoded batch, in order, with the vectors of its decoded inputs.

    The batches are read ahead of inference (up to `READ_AHEAD_BYTES`), so decoding runs at its own pace even
    while inference is slower, and inference takes every core once the last batch is decoded (`InferenceThreads`).
    `ModelError` if the model gives a vector that is not finite.
    """
    prep = embedder.model.preprocessing
    depth = READ_AHEAD_BYTES // (batch_size * prep.size[0] * prep.size[1] * prep.channels)
    with InferenceThreads(workers) as threads, ReadAhead(iter(batches), depth, _out_of_shared_memory) as ahead:
        for batch in ahead:
            if ahead.exhausted:
                threads.decoding_finished()
            vectors = (embedder.embed(batch.pixels) if len(batch.pixels)
                       else np.empty((0, embedder.model.embedding_dim), dtype=np.float32))
            yield _with_vectors(batch, vectors)


def embed_batches(embedder: Embedder, sources: Sequence[Source], *, batch_size: int = BATCH_SIZE,
                  workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[list[SourceResult]]:
    """Decode `sources` in `workers` processes (default: `default_workers`; 0 decodes in a thread of this one) and
    embed them `batch_size` at a time on the embedder's device: one list of results per batch, in order."""
    if workers is None:
        workers = default_workers(embedder.device.type == "cpu")
    loader = decoding_loader(sources, embedder.model.preprocessing, batch_size=batch_size, workers=workers,
                             max_pixels=max_pixels, pin_memory=embedder.pin_memory)
    yield from embed_decoded(loader, embedder, workers=workers, batch_size=batch_size)


def embed_sources(embedder: Embedder, inputs: Sequence[Path | bytes], max_pixels: int = DEFAULT_MAX_PIXELS,
                  batch_size: int = BATCH_SIZE, workers: int = 0) -> list[SourceResult]:
    """The result of each input, in order: a path to an image file, or the bytes of an encoded image. Decodes in
    this process unless `workers` is given: the call for a handful of inputs (a query, a server's upload)."""
    sources = [Source(i, data=item) if isinstance(item, bytes) else Source(i, path=str(item))
               for i, item in enumerate(inputs)]
    return [result for batch in embed_batches(embedder, sources, batch_size=batch_size, workers=workers,
                                              max_pixels=max_pixels) for result in batch]


def embed_each(embedder: Embedder, paths: Sequence[Path | str]) -> tuple[np.ndarray, dict[int, str]]:
    """Embeddings of the files that decode (in one batch, in order), and for each that does not, by its position,
    its error: "path: reason"."""
    embedded = embed_sources(embedder, [Path(path) for path in paths])
    failed = {i: f"{path}: {item.error}" for i, (path, item) in enumerate(zip(paths, embedded)) if item.error}
    vectors = [item.vector for item in embedded if item.vector is not None]
    if not vectors:
        return np.empty((0, embedder.model.embedding_dim), np.float32), failed
    return np.stack(vectors), failed


def embed_files(embedder: Embedder, paths: Sequence[Path | str]) -> np.ndarray:
    """The embedding of every file, in order; `DecodeError` naming the first that does not decode."""
    vectors, failed = embed_each(embedder, paths)
    if failed:
        raise DecodeError(next(iter(failed.values())))
    return vectors
