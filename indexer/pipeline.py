"""`simsearch index`: bring an index up to date with the image files under some paths.

The pipeline scans the paths, decides what happens to each file, hashes and embeds; the index owns the run
(`SimilarityIndex.update`, `retrieval.index_run`: the writer's lock and the run's states, opened, planned, applying,
finished or abandoned) and writes through it, each write one transaction that leaves the index consistent and
usable: cheap changes (moves, copies, touches) commit together, then each embedded batch commits on its own. A run
killed at any point keeps what it committed, and the next run picks up what is left.

torch is imported only when something needs embedding, so a re-run over an unchanged folder
costs a scan and a few queries, not a model load.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cached_property
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from indexer.plan import KnownImage, Plan, Work, make_plan
from retrieval.errors import InputPathError, ModelMismatchError
from retrieval.index import SimilarityIndex
from retrieval.index_run import IndexRun
from retrieval.models.model_spec import DEFAULT_MODEL_FILE, ModelSpec, read_model_header
from retrieval.report import IndexSummary, Reporter, SilentReporter, other_files_text
from retrieval.sources.content_hash import hash_file
from retrieval.sources.decode import Source, SourceResult
from retrieval.sources.file_identity import identify_file
from retrieval.sources.head_start import HeadStart
from retrieval.sources.images import DEFAULT_MAX_PIXELS, Preprocessing
from retrieval.sources.scan import ScannedFile, ScanResult, scan, stat_file
from retrieval.store.records import UNSET, ImageChange, ModelInfo, Unset
from retrieval.vectors.faiss_factory import check_description, choose_description

if TYPE_CHECKING:
    from retrieval.models.model import EmbeddingModel

HASH_THREADS = 4


@dataclass(frozen=True)
class IndexOptions:
    batch_size: int = 32
    workers: int | None = None
    device: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    reembed: bool = False
    index_type: str | None | Unset = UNSET
    """A FAISS factory string for the vector index from now on; None: chosen by size again; UNSET: as it was."""
    max_memory: int | None | Unset = UNSET
    """Bytes the vector index may hold from now on; None: no limit; UNSET: as it was."""
    ray: str | None = None
    """Decode and embed as a Ray job: a cluster's address, or "local" for a Ray of this machine; None: locally."""


class _Target:
    """The model vectors are written for (loaded on first use), its spec (known without loading it), and whether
    the index serves it."""

    def __init__(self, load: Callable[[], EmbeddingModel], model_id: int, spec: ModelSpec, serving: bool) -> None:
        self._load = load
        self.model_id = model_id
        self.spec = spec
        self.serving = serving

    @property
    def preprocessing(self) -> Preprocessing:
        return self.spec.preprocessing

    @cached_property
    def model(self) -> EmbeddingModel:
        return self._load()


def index_paths(index: SimilarityIndex, paths: Sequence[Path], model: EmbeddingModel | None = None,
                options: IndexOptions | None = None, reporter: Reporter | None = None) -> IndexSummary:
    """Index the image files under `paths` into `index` (incrementally) and return what happened.

    `model` defaults to the index's own model, or the built-in one for a new index; a different
    model is refused unless `options.reembed`, which re-embeds every image of the index with it.
    """
    options = options or IndexOptions()
    reporter = reporter or SilentReporter()
    started = time.perf_counter()
    if not options.ray:
        return _index_paths(index, paths, model, options, reporter, started)
    from retrieval.sources.ray_embed import ray_session

    with ray_session(_ray_address(options)):  # before anything is planned or written: a wrong address costs nothing
        return _index_paths(index, paths, model, options, reporter, started)


def _ray_address(options: IndexOptions) -> str | None:
    return None if options.ray == "local" else options.ray


def _index_paths(index: SimilarityIndex, paths: Sequence[Path], model: EmbeddingModel | None,
                 options: IndexOptions, reporter: Reporter, started: float) -> IndexSummary:
    scanned = scan(paths, index.root)
    with index.update(exclusive=options.reembed) as run:
        target = _resolve_target(index, model, options.reembed)
        known = index.known_images(scanned.roots, target.model_id, everything=not target.serving)
        sizes = index.indexed_sizes()
        problem_paths = {p.path for p in scanned.problems if p.is_file}
        if not scanned.files and not known and not problem_paths:
            others = f" ({other_files_text(scanned.other_files)})" if scanned.other_files else ""
            raise InputPathError(f"no image files found under {', '.join(scanned.roots)}{others}")
        files = scanned.files + _outside_files(known, scanned) if not target.serving else scanned.files
        plan = make_plan(files, known, sizes, problem_paths)
        _configure_search(index, run, target, plan, options)
        summary = IndexSummary(unchanged=plan.unchanged, still_failing=plan.still_failing,
                               aliases=scanned.alias_paths, other_files=dict(scanned.other_files))
        _drop_aliases_of_indexed(index, plan, known, summary)
        run.record_plan(target.model_id, target.serving, plan.new_file_ids)
        _record_scan_problems(run, scanned, known, summary, reporter)
        hashed = _hash(plan.to_hash, reporter)
        to_embed = plan.to_embed + _apply_hashed(index, run, hashed, plan.gone, target, summary)
        run.remove([row.id for row in plan.gone])
        summary.removed += len(plan.gone)
        _embed(index, run, target, to_embed, options, summary, reporter)
        run.finish()
    summary.seconds = time.perf_counter() - started
    return summary


def _resolve_target(index: SimilarityIndex, requested: EmbeddingModel | None, reembed: bool) -> _Target:
    """The model to embed with; a new index's default model is registered from its file, so that nothing here
    needs torch. A new index serves the first model registered, by this run or by a writer beside it."""
    active = index.served_model()
    if active is None:
        if requested is None:
            header = read_model_header(DEFAULT_MODEL_FILE)
            record = index.register_model_file(DEFAULT_MODEL_FILE, header)
            target = _Target(_load_default_model, record.id, header.spec, serving=True)
        else:
            record = index.register_model(requested)
            target = _Target(lambda: requested, record.id, requested.spec, serving=True)
        served = index.serve_first_model(record.id)
        if served.id == record.id:
            return target
        active = served
    if requested is None:
        return _Target(index.load_model, active.id, ModelSpec.from_json(active.spec), serving=True)
    if requested.content_hash == active.content_hash:
        return _Target(lambda: requested, active.id, requested.spec, serving=True)
    if not reembed:
        raise ModelMismatchError.between(index.root, (active.name, active.content_hash),
                                         (requested.spec.name, requested.content_hash),
                                         "pass --reembed to re-embed every image with the new model")
    record = index.register_model(requested)
    return _Target(lambda: requested, record.id, requested.spec, serving=False)


def _configure_search(index: SimilarityIndex, run: IndexRun, target: _Target, plan: Plan, options: IndexOptions
                      ) -> None:
    """Record the vector index asked for, once it is known to suit the model and, at most the vectors the index will
    hold after `plan`, the memory allowed: before anything is embedded, so that a refusal leaves the index as it
    was."""
    if options.index_type is UNSET and options.max_memory is UNSET:
        return
    most = index.indexed_count() + len(plan.to_embed) + sum(1 for work in plan.to_hash if work.known is None)
    state = index.search_settings()
    index_type = state.index_type if options.index_type is UNSET else options.index_type
    max_memory = state.max_memory if options.max_memory is UNSET else options.max_memory
    if index_type is not None:
        check_description(target.spec.embedding_dim, index_type, most)
    elif max_memory is not None:
        choose_description(most, target.spec.embedding_dim, max_memory)
    run.record_search_settings(index_type, max_memory)


def _load_default_model() -> EmbeddingModel:
    from retrieval.models.model import load_default_model

    return load_default_model()


def _drop_aliases_of_indexed(index: SimilarityIndex, plan: Plan, known: dict[str, KnownImage],
                             summary: IndexSummary) -> None:
    """Leave out the new paths to files that are indexed under a path outside the scanned ones (`index d/latest`
    after `index d/2024`, where `latest` links to `2024`), if that path still reaches the file. (A row under the
    scanned paths is the scan's to settle: its path is kept, or it is gone and the file moves to its new path.)"""
    new = {w.file.file_id: w.file.path for w in chain(plan.to_hash, plan.to_embed) if w.known is None}
    if not new:
        return
    aliases: set[str] = set()
    for path, indexed_id in index.indexed_paths_of_files(new):
        identity = identify_file(path) if path not in known else None
        if identity is not None and identity.file_id == indexed_id:
            aliases.add(new[indexed_id])
    plan.drop(aliases)
    summary.aliases += len(aliases)


def _outside_files(known: dict[str, KnownImage], scanned: ScanResult) -> list[ScannedFile]:
    """For a re-embed: the indexed files outside the scanned paths, which must be re-embedded too."""
    inside = {f.path for f in scanned.files}
    files = []
    for path, row in known.items():
        if path in inside or not row.indexed:
            continue
        try:
            file = stat_file(path, label=row.label)  # not under a scanned folder: it keeps its class
        except OSError:
            continue
        if file is not None:
            files.append(file)
    return files


def _record_scan_problems(run: IndexRun, scanned: ScanResult, known: dict[str, KnownImage], summary: IndexSummary,
                          reporter: Reporter) -> None:
    """Warn about each problem of the scan and record each file that cannot be read."""
    for problem in scanned.problems:
        reporter.warn(problem.path, problem.reason)
    summary.failed += sum(1 for p in scanned.problems if p.is_file and not p.recordable)
    changes = []
    for problem in scanned.problems:
        if not (problem.is_file and problem.recordable):
            continue
        row = known.get(problem.path)
        if row is not None and row.failed:
            summary.still_failing += 1
        else:
            summary.failed += 1
        changes.append(_failed(problem.path, row, problem.reason, None, None, None))
    run.apply(changes)


def _hash(works: list[Work], reporter: Reporter) -> list[Work]:
    """Fill in the content hash of each work item, in threads (hashlib releases the GIL)."""
    pending = [w for w in works if w.content_hash is None]
    if pending:
        reporter.start("hashing", len(pending))

    def one(work: Work) -> Work:
        try:
            digest = hash_file(work.file.path)
        except OSError:
            digest = None
        reporter.advance(1)
        return Work(work.file, work.known, digest)

    with ThreadPoolExecutor(HASH_THREADS) as pool:
        done = list(pool.map(one, pending))
    return [w for w in works if w.content_hash is not None] + done


def _apply_hashed(index: SimilarityIndex, run: IndexRun, works: list[Work], gone: list[KnownImage],
                  target: _Target, summary: IndexSummary) -> list[Work]:
    """Settle the hashed files whose content is already embedded; return those still to embed.

    Removes from `gone` the rows that turn out to have moved.
    """
    to_embed: list[Work] = []
    if not works:
        return to_embed
    gone_by_hash = {row.content_hash: row for row in gone if row.indexed and row.content_hash}
    stored = index.stored_hashes(target.model_id, (w.content_hash for w in works if w.content_hash))
    changes = []
    for work in works:
        row, digest = work.known, work.content_hash
        if digest is None:
            to_embed.append(work)
            continue
        if row is not None and row.failed and row.content_hash == digest:
            changes.append(_failed(row.path, row, row.error or "", work.file.size, work.file.mtime_ns, digest))
            summary.still_failing += 1
            continue
        if digest not in stored:
            to_embed.append(work)
            continue
        width = height = None
        keep_vector = False
        if row is None and digest in gone_by_hash:
            moved = gone_by_hash.pop(digest)
            gone.remove(moved)
            row, width, height = moved, moved.width, moved.height
            summary.moved += 1
        elif row is None:
            summary.added += 1
            summary.copies += 1
        else:
            width, height = row.width, row.height
            same = row.content_hash == digest and row.indexed
            if same:
                summary.unchanged += 1
            else:
                summary.updated += 1
            keep_vector = same and not target.serving
        changes.append(_indexed(work.file, row, digest, width, height, keep_vector))
    run.apply(changes)
    return to_embed


def _embed(index: SimilarityIndex, run: IndexRun, target: _Target, works: list[Work], options: IndexOptions,
           summary: IndexSummary, reporter: Reporter) -> None:
    if not works:
        return
    started = time.perf_counter()
    sources = [Source(i, path=work.file.path, content_hash=work.content_hash) for i, work in enumerate(works)]
    shipped = index.model_by_id(target.model_id) if options.ray else None  # the model Ray workers get
    assert shipped is not None or not options.ray
    batches = (_ray_results(index, shipped, target, sources, options) if shipped is not None
               else _local_results(target, sources, options))
    reporter.start("embedding", len(works))
    try:
        for results in batches:
            changes, vectors = _batch_changes(target, [(works[result.key], result) for result in results], summary,
                                              reporter)
            run.apply(changes, vectors)
            summary.embedded += sum(result.vector is not None for result in results)
            reporter.advance(len(results))
    finally:
        batches.close()  # a run stopped early stops its decoding (worker processes, a Ray job) now
    summary.embed_seconds = time.perf_counter() - started


def _local_results(target: _Target, sources: list[Source], options: IndexOptions) -> Generator[list[SourceResult]]:
    """Decoded in worker processes (the first files by a head start while torch loads), embedded here."""
    head = HeadStart(sources, target.preprocessing, options.max_pixels) if options.workers != 0 else None
    with head or nullcontext():  # decoding starts now; torch and the model load meanwhile
        from retrieval.models.embedding import Embedder, pick_device, pins_memory
        from retrieval.sources.embed import embed_decoded
        from retrieval.sources.workers import collate, decoding_loader, default_workers

        model, device = target.model, pick_device(options.device)
        early = head.take() if head is not None else []
    workers = default_workers(device.type == "cpu") if options.workers is None else options.workers
    loader = decoding_loader(sources[len(early):], target.preprocessing, batch_size=options.batch_size,
                             workers=workers, max_pixels=options.max_pixels, pin_memory=pins_memory(device))
    rest = iter(loader)  # its workers decode while the embedder is prepared and the early files are embedded
    embedder = Embedder(model, device)
    early_batches = (collate(early[i:i + options.batch_size]) for i in range(0, len(early), options.batch_size))
    yield from embed_decoded(chain(early_batches, rest), embedder, workers=workers, batch_size=options.batch_size)


def _ray_results(index: SimilarityIndex, model: ModelInfo, target: _Target, sources: list[Source],
                 options: IndexOptions) -> Generator[list[SourceResult]]:
    """Decoded and embedded on Ray (`retrieval.sources.ray_embed`), with the index's copy of `model` shipped to the
    model actors."""
    from retrieval.sources.ray_embed import ray_results

    yield from ray_results(sources, index.model_path(model.content_hash), target.preprocessing,
                           address=_ray_address(options), batch_size=options.batch_size,
                           max_pixels=options.max_pixels, device=options.device)


def _batch_changes(target: _Target, batch: list[tuple[Work, SourceResult]], summary: IndexSummary,
                   reporter: Reporter) -> tuple[list[ImageChange], list[tuple[str, bytes]]]:
    """The image changes and the new vectors of one embedded batch."""
    changes, vectors = [], []
    for work, result in batch:
        row = work.known
        if result.error is not None:
            reporter.warn(work.file.path, result.error)
            changes.append(_failed(work.file.path, row, result.error, work.file.size, work.file.mtime_ns,
                                   result.content_hash))
            summary.failed += 1
            continue
        assert result.content_hash is not None and result.vector is not None
        vectors.append((result.content_hash, np.asarray(result.vector, dtype=np.float32).tobytes()))
        content_changed = row is None or row.content_hash != result.content_hash or not row.indexed
        if row is None:
            summary.added += 1
        elif content_changed:
            summary.updated += 1
        else:
            summary.reembedded += 1
        changes.append(_indexed(work.file, row, result.content_hash, result.width, result.height,
                                keep_vector=not (target.serving or content_changed)))
    return changes, vectors


def _indexed(file: ScannedFile, row: KnownImage | None, content_hash: str, width: int | None, height: int | None,
             keep_vector: bool = False) -> ImageChange:
    return ImageChange.indexed(file.path, row_id=row.id if row else None, file_id=file.file_id, size=file.size,
                               mtime_ns=file.mtime_ns, label=file.label, content_hash=content_hash, width=width,
                               height=height, vector_hash=content_hash, keep_vector=keep_vector)


def _failed(path: str, row: KnownImage | None, reason: str, size: int | None, mtime_ns: int | None,
            content_hash: str | None) -> ImageChange:
    return ImageChange.failed(path, row_id=row.id if row else None, file_id=row.file_id if row else None, size=size,
                              mtime_ns=mtime_ns, label=row.label if row else None, content_hash=content_hash,
                              error=reason)
