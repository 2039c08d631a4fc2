"""Dedup over shards on one machine: the samples of `retrieval.sources.shard_samples`, a chunk at a time, decoded and
embedded by the index's own path (`retrieval.sources`: the decode workers, `embed_decoded`; the first chunk's
first samples by a head start, `retrieval.sources.head_start`, while torch and the model load), then each decided
(`retrieval.decisions.sample_groups`).

Bad input is recorded, never a stop: a sample that does not decode is a "failed" row, a shard that cannot be read
on a "skipped" row after the samples read from it before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import chain

from retrieval.decisions.pixel_rule import PixelSignature
from retrieval.decisions.sample_groups import (STATUS_SKIPPED, EmbeddedSample, SampleDecision, SampleDecisions,
                                               SeenSamples, decide_samples, signature_of_bytes)
from retrieval.models.embedding import Embedder
from retrieval.sources.decode import Decoded, SourceResult
from retrieval.sources.embed import embed_decoded
from retrieval.sources.images import DEFAULT_MAX_PIXELS
from retrieval.sources.shard_samples import HeadStartedChunks, SampleChunks, sources_of
from retrieval.sources.shards import Sample, SampleLocation, ShardColumns, read_sample_bytes
from retrieval.sources.workers import collate, decoding_loader, default_workers

BATCH_SIZE = 32
"""Images embedded at once: `simsearch index`'s default."""


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


def dedup_shards(chunks: SampleChunks | HeadStartedChunks, embedder: Embedder, threshold: float, *,
                 columns: ShardColumns = ShardColumns(), seen: SeenSamples | None = None, lookalikes: bool = False,
                 workers: int | None = None,
                 progress: Callable[[EmbeddedSample], None] | None = None) -> ShardDedup:
    """Decide every sample of `chunks` against `seen` and among themselves; `progress` is called for each sample
    once embedded (or failed). The chunks' keys must avoid `seen`'s (`SampleChunks(taken=seen.keys)`)."""
    workers = default_workers(embedder.device.type == "cpu") if workers is None else workers
    locations: list[SampleLocation | None] = []
    embedded: list[EmbeddedSample] = []
    if isinstance(chunks, HeadStartedChunks):
        early = chunks.take()
        plan: Iterator[tuple[list[Sample], list[Decoded]]] = chain([(chunks.first, early)],
                                                                   ((chunk, []) for chunk in chunks.rest()))
        source = chunks.chunks
    else:
        plan = ((chunk, []) for chunk in chunks)
        source = chunks
    for chunk, decoded in plan:
        locations += [sample.location for sample in chunk]
        for result in _embedded(chunk, decoded, embedder, workers):
            embedded.append(result)
            if progress is not None:
                progress(result)

    def signature_of(number: int) -> PixelSignature | None:
        location = locations[number]
        return None if location is None else signature_of_bytes(read_sample_bytes(location, columns))

    decisions = decide_samples(embedded, threshold, signature_of, seen, lookalikes)
    skipped = [SampleDecision(None, shard, keep=None, status=STATUS_SKIPPED, error=why)
               for shard, why in source.skipped]
    return ShardDedup(decisions, embedded, signature_of, skipped, source.keys.renamed)


def _embedded(chunk: list[Sample], early: list[Decoded], embedder: Embedder, workers: int
              ) -> Iterator[EmbeddedSample]:
    """The chunk's samples in order, those with bytes decoded (the first already, `early`) and embedded as
    `simsearch index` does (`indexer.pipeline._local_results`)."""
    prep = embedder.model.preprocessing
    loader = decoding_loader(sources_of(chunk)[len(early):], prep, batch_size=BATCH_SIZE, workers=workers,
                             max_pixels=DEFAULT_MAX_PIXELS, pin_memory=embedder.pin_memory)
    early_batches = (collate(early[i:i + BATCH_SIZE]) for i in range(0, len(early), BATCH_SIZE))
    batches = embed_decoded(chain(early_batches, iter(loader)), embedder, workers=workers, batch_size=BATCH_SIZE)
    return _in_order(chunk, batches)


def _in_order(chunk: list[Sample], batches: Iterator[list[SourceResult]]) -> Iterator[EmbeddedSample]:
    """Each sample of the chunk in order: with its result, or failed where it had no bytes to decode."""
    pending = iter(enumerate(chunk))
    for batch in batches:
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
