"""Dedup over shards on one machine: read each shard's samples in order (`retrieval.sources.shards`), decode and
embed them through the index's own path (`retrieval.sources.embed_batches`, a chunk of samples at a time so that
no more than `CHUNK_BYTES` of encoded images are held), then decide each (`retrieval.sample_groups`).

Bad input is recorded, never a stop: a sample that does not decode is a "failed" row, a shard that cannot be read
(not a tar or parquet file, truncated, a column missing) a "skipped" row after the samples read from it before.
Keys are the shards' own; a key met again (in another shard, or the same one) is named `KEY@SHARD` (the shard's
file name) from its second occurrence on, and `KEY@SHARD#N` should that be taken too, so that every row's key is
unique and `duplicate_of` names one sample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.embedding import Embedder
from retrieval.errors import DecodeError, ShardError
from retrieval.pixel_rule import PixelSignature, signature
from retrieval.sample_groups import (STATUS_SKIPPED, EmbeddedSample, SampleDecision, SampleDecisions, SeenSamples,
                                     decide_samples)
from retrieval.sources.decode import Source
from retrieval.sources.embed import embed_batches
from retrieval.sources.shards import MAX_SAMPLE_BYTES, Sample, SampleLocation, ShardColumns, read_sample_bytes, read_shard

CHUNK_BYTES = 64 << 20
"""Encoded image bytes handed to the decode workers at a time (each chunk starts them anew: about 0.1 s)."""


@dataclass
class ShardDedup:
    """A run's decisions (one row a sample, then a row for each shard skipped), the samples it embedded and how to
    read their pixels again."""

    decisions: SampleDecisions
    samples: list[EmbeddedSample]
    signature_of: Callable[[int], PixelSignature | None]
    skipped: list[SampleDecision] = field(default_factory=list)
    renamed: int = 0
    """Keys met more than once and renamed (`KEY@SHARD`)."""

    @property
    def rows(self) -> list[SampleDecision]:
        return [*self.decisions.rows, *self.skipped]


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


def signature_of_bytes(data: bytes | None) -> PixelSignature | None:
    """The pixel rule's signature of encoded image bytes, or None for none that decode."""
    if data is None:
        return None
    try:
        return signature(data)
    except DecodeError:
        return None


def dedup_shards(shards: Sequence[Path], embedder: Embedder, threshold: float, *,
                 columns: ShardColumns = ShardColumns(), seen: SeenSamples | None = None, lookalikes: bool = False,
                 workers: int | None = None, max_bytes: int = MAX_SAMPLE_BYTES,
                 progress: Callable[[EmbeddedSample], None] | None = None,
                 skipped: Callable[[str, str], None] | None = None) -> ShardDedup:
    """Decide every sample of `shards` against `seen` and among themselves. `progress` is called for each sample
    once embedded (or failed), `skipped(shard, why)` for a shard that could not be read on."""
    keys = UniqueKeys(set(seen.keys) if seen is not None else set())
    skips: list[SampleDecision] = []
    locations: list[SampleLocation | None] = []
    embedded: list[EmbeddedSample] = []

    def samples() -> Iterator[Sample]:
        for shard in shards:
            try:
                for sample in read_shard(shard, columns, max_bytes):
                    yield Sample(keys.unique(sample.key, sample.shard), sample.shard, sample.data, sample.location,
                                 sample.error)
            except ShardError as exc:
                skips.append(SampleDecision(None, str(shard), keep=None, status=STATUS_SKIPPED, error=str(exc)))
                if skipped is not None:
                    skipped(str(shard), str(exc))

    for chunk in _chunks(samples()):
        locations += [sample.location for sample in chunk]
        for result in _embedded(chunk, embedder, workers):
            embedded.append(result)
            if progress is not None:
                progress(result)

    def signature_of(number: int) -> PixelSignature | None:
        location = locations[number]
        return None if location is None else signature_of_bytes(read_sample_bytes(location, columns))

    decisions = decide_samples(embedded, threshold, signature_of, seen, lookalikes)
    return ShardDedup(decisions, embedded, signature_of, skips, keys.renamed)


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


def _embedded(chunk: list[Sample], embedder: Embedder, workers: int | None) -> Iterator[EmbeddedSample]:
    """The chunk's samples in order, those with bytes decoded and embedded as `simsearch index` does."""
    sources = [Source(number, data=sample.data) for number, sample in enumerate(chunk) if sample.data is not None]
    pending = iter(enumerate(chunk))
    for batch in embed_batches(embedder, sources, workers=workers):
        for result in batch:
            for number, sample in pending:
                if number == result.key:
                    yield EmbeddedSample(sample.key, sample.shard, result.content_hash, result.width, result.height,
                                         result.vector, result.error)
                    break
                yield _unread(sample)
    for _, sample in pending:
        yield _unread(sample)


def _unread(sample: Sample) -> EmbeddedSample:
    return EmbeddedSample(sample.key, sample.shard, None, None, None, None, sample.error or "no image")
