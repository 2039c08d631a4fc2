"""The samples of a run over shards, in order, a chunk at a time (no torch here: the first chunk is read and its
decoding started before torch loads, as `simsearch index` starts on its first files).

Keys are the shards' own; a key met again (in another shard, or the same one) is named `KEY@SHARD` (the shard's
file name) from its second occurrence on, and `KEY@SHARD#N` should that be taken too, so that every row's key is
unique and `duplicate_of` names one sample. A shard that cannot be read on (not a tar or parquet file, truncated,
a column missing) is recorded in `skipped` after the samples read from it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.errors import ShardError
from retrieval.sources.decode import Decoded, Source
from retrieval.sources.head_start import HeadStart
from retrieval.sources.images import DEFAULT_MAX_PIXELS, Preprocessing
from retrieval.sources.shards import MAX_SAMPLE_BYTES, Sample, ShardColumns, read_shard

CHUNK_BYTES = 64 << 20
"""Encoded image bytes handed to the decode workers at a time (each chunk starts them anew: about 0.1 s)."""


@dataclass
class UniqueKeys:
    """Unique keys: a key met again becomes KEY@SHARD, then KEY@SHARD#N."""

    taken: set[str] = field(default_factory=set)
    renamed: int = 0

    def unique(self, key: str, shard: str) -> str:
        if key not in self.taken:
            self.taken.add(key)
            return key
        self.renamed += 1
        base = f"{key}@{Path(shard).name}"
        candidate, number = base, 1
        while candidate in self.taken:
            number += 1
            candidate = f"{base}#{number}"
        self.taken.add(candidate)
        return candidate


class SampleChunks:
    """The samples of `shards` with unique keys (none of `taken`), in chunks of about `CHUNK_BYTES`; shards that
    could not be read on in `skipped`, as (shard, why)."""

    def __init__(self, shards: Sequence[Path], columns: ShardColumns = ShardColumns(),
                 max_bytes: int = MAX_SAMPLE_BYTES, taken: Iterable[str] = ()) -> None:
        self.keys = UniqueKeys(set(taken))
        self.skipped: list[tuple[str, str]] = []
        self._chunks = _chunks(self._samples(shards, columns, max_bytes))

    def _samples(self, shards: Sequence[Path], columns: ShardColumns, max_bytes: int) -> Iterator[Sample]:
        for shard in shards:
            try:
                for sample in read_shard(shard, columns, max_bytes):
                    yield Sample(self.keys.unique(sample.key, sample.shard), sample.shard, sample.data,
                                 sample.location, sample.error)
            except ShardError as exc:
                self.skipped.append((str(shard), str(exc)))

    def __iter__(self) -> Iterator[list[Sample]]:
        return self._chunks


class HeadStartedChunks:
    """The chunks of a run with the first samples of the first chunk decoding already (`HeadStart`), made before
    torch is imported; `take` them once the embedder is ready."""

    def __init__(self, chunks: SampleChunks, prep: Preprocessing) -> None:
        self.chunks = chunks
        self._iterator = iter(chunks)
        self.first = next(self._iterator, [])
        self._head = HeadStart(sources_of(self.first), prep, DEFAULT_MAX_PIXELS)

    def take(self) -> list[Decoded]:
        with self._head:
            return self._head.take()

    def rest(self) -> Iterator[list[Sample]]:
        return self._iterator


def sources_of(chunk: list[Sample]) -> list[Source]:
    """What the decode path takes of a chunk: each sample with bytes, keyed by its place in the chunk."""
    return [Source(number, data=sample.data) for number, sample in enumerate(chunk) if sample.data is not None]


def _chunks(samples: Iterator[Sample]) -> Iterator[list[Sample]]:
    chunk: list[Sample] = []
    held = 0
    for sample in samples:
        chunk.append(sample)
        held += len(sample.data or b"")
        if held >= CHUNK_BYTES:
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk
