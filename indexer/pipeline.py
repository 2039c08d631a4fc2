"""`simsearch index`: bring an index up to date with the image files under some paths.

Every database transaction leaves the index consistent and usable: cheap changes (moves,
copies, touches, removals) commit together, then each embedded batch commits on its own. A run
killed at any point keeps what it committed, and the next run picks up what is left.

torch is imported only when something needs embedding, so a re-run over an unchanged folder
costs a scan and a few queries, not a model load.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cached_property
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session, aliased

from indexer.head_start import HeadStart
from indexer.plan import KnownImage, Plan, Work, make_plan
from indexer.report import IndexSummary, Reporter, SilentReporter
from indexer.scan import ScannedFile, ScanResult, scan, stat_file
from retrieval.content_hash import hash_file
from retrieval.errors import InputPathError, ModelMismatchError
from retrieval.file_identity import identify_file
from retrieval.images import DEFAULT_MAX_PIXELS, Preprocessing
from retrieval.index import SimilarityIndex
from retrieval.model_spec import DEFAULT_MODEL_FILE, ModelSpec, read_model_header
from retrieval.sources.decode import Source, SourceResult
from retrieval.store.queries import images_under
from retrieval.store.schema import STATUS_ERROR, STATUS_OK, ImageRecord, IndexState, VectorRecord, utcnow

if TYPE_CHECKING:
    from retrieval.model import EmbeddingModel

HASH_THREADS = 4


@dataclass(frozen=True)
class IndexOptions:
    batch_size: int = 32
    workers: int | None = None
    device: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    reembed: bool = False


class _Target:
    """The model vectors are written for (loaded on first use), its preprocessing (known without loading it), and
    whether the index serves it."""

    def __init__(self, load: Callable[[], EmbeddingModel], model_id: int, preprocessing: Preprocessing,
                 serving: bool) -> None:
        self._load = load
        self.model_id = model_id
        self.preprocessing = preprocessing
        self.serving = serving

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
    scanned = scan(paths)
    with index.writer_lock():
        target = _resolve_target(index, model, options.reembed)
        with index.sessions() as session:
            known = _known_images(session, scanned.roots, target.model_id, everything=not target.serving)
            sizes = set(session.scalars(select(ImageRecord.size).where(ImageRecord.status == STATUS_OK).distinct()))
        problem_paths = {p.path for p in scanned.problems if p.is_file}
        if not scanned.files and not known and not problem_paths:
            raise InputPathError(f"no image files found under {', '.join(scanned.roots)}")
        files = scanned.files + _outside_files(known, scanned) if not target.serving else scanned.files
        plan = make_plan(files, known, sizes, problem_paths)
        summary = IndexSummary(unchanged=plan.unchanged, still_failing=plan.still_failing,
                               aliases=len(scanned.aliases))
        _drop_aliases_of_indexed(index, plan, known, summary)
        _record_scan_problems(index, scanned, known, plan, summary, reporter)
        hashed = _hash(plan.to_hash, reporter)
        to_embed = plan.to_embed + _apply_hashed(index, hashed, plan.gone, target, summary)
        _remove(index, plan.gone, summary)
        _embed(index, target, to_embed, options, summary, reporter)
        _finish(index, target)
        index.vector_index()  # the FAISS file, brought up to the database now rather than by the first query
    summary.seconds = time.perf_counter() - started
    return summary


def _resolve_target(index: SimilarityIndex, requested: EmbeddingModel | None, reembed: bool) -> _Target:
    """The model to embed with; a new index's default model is registered from its file, so that nothing here
    needs torch."""
    with index.writing() as session:
        state = session.get(IndexState, 1)
        assert state is not None
        active = state.model
        if active is None and requested is None:
            header = read_model_header(DEFAULT_MODEL_FILE)
            record = index.register_model_file(session, DEFAULT_MODEL_FILE, header)
            state.model_id = record.id
            return _Target(_load_default_model, record.id, header.spec.preprocessing, serving=True)
        if active is None:
            assert requested is not None
            record = index.register_model(session, requested)
            state.model_id = record.id
            return _Target(lambda: requested, record.id, requested.preprocessing, serving=True)
        if requested is None:
            return _Target(index.load_model, active.id, ModelSpec.from_json(active.spec).preprocessing, serving=True)
        if requested.content_hash == active.content_hash:
            return _Target(lambda: requested, active.id, requested.preprocessing, serving=True)
        if not reembed:
            raise ModelMismatchError.between(index.root, (active.name, active.content_hash),
                                             (requested.spec.name, requested.content_hash),
                                             "pass --reembed to re-embed every image with the new model")
        record = index.register_model(session, requested)
        return _Target(lambda: requested, record.id, requested.preprocessing, serving=False)


def _load_default_model() -> EmbeddingModel:
    from retrieval.model import load_default_model

    return load_default_model()


def _known_images(session: Session, roots: list[str], target_id: int, everything: bool) -> dict[str, KnownImage]:
    vector = aliased(VectorRecord)
    query = select(ImageRecord.id, ImageRecord.path, ImageRecord.size, ImageRecord.mtime_ns,
                   ImageRecord.content_hash, ImageRecord.status, ImageRecord.file_id, ImageRecord.label,
                   vector.model_id).outerjoin(
        vector, vector.id == ImageRecord.vector_id)
    if not everything:
        query = query.where(images_under(roots))
    return {row.path: KnownImage(row.id, row.path, row.size, row.mtime_ns, row.content_hash, row.status,
                                 row.model_id == target_id, row.file_id, row.label) for row in session.execute(query)}


def _drop_aliases_of_indexed(index: SimilarityIndex, plan: Plan, known: dict[str, KnownImage],
                             summary: IndexSummary) -> None:
    """Leave out the new paths to files that are indexed under a path outside the scanned ones (`index d/latest`
    after `index d/2024`, where `latest` links to `2024`), if that path still reaches the file. (A row under the
    scanned paths is the scan's to settle: its path is kept, or it is gone and the file moves to its new path.)"""
    new = {w.file.file_id: w.file.path for w in chain(plan.to_hash, plan.to_embed) if w.known is None}
    if not new:
        return
    aliases: set[str] = set()
    ids = sorted(new)
    with index.sessions() as session:
        for start in range(0, len(ids), 500):
            rows = session.execute(select(ImageRecord.path, ImageRecord.file_id).where(
                ImageRecord.file_id.in_(ids[start:start + 500]), ImageRecord.status == STATUS_OK))
            for path, indexed_id in rows:
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
        if path in inside or row.status != STATUS_OK:
            continue
        try:
            file = stat_file(path, label=row.label)  # not under a scanned folder: it keeps its class
        except OSError:
            continue
        if file is not None:
            files.append(file)
    return files


def _record_scan_problems(index: SimilarityIndex, scanned: ScanResult, known: dict[str, KnownImage], plan: Plan,
                          summary: IndexSummary, reporter: Reporter) -> None:
    """Warn about each problem of the scan and record each file that cannot be read; also note the new device
    and inode of unchanged files."""
    for problem in scanned.problems:
        reporter.warn(problem.path, problem.reason)
    unstorable = [p for p in scanned.problems if p.is_file and not p.recordable]
    summary.failed += len(unstorable)
    file_problems = [p for p in scanned.problems if p.is_file and p.recordable]
    if not file_problems and not plan.new_file_ids:
        return
    with index.writing() as session:
        if plan.new_file_ids:
            session.execute(update(ImageRecord), [{"id": row_id, "file_id": new_id}
                                                  for row_id, new_id in plan.new_file_ids.items()])
        served_changed = False
        for problem in file_problems:
            row = known.get(problem.path)
            if row is not None and row.status == STATUS_ERROR:
                summary.still_failing += 1
            else:
                summary.failed += 1
            served_changed = served_changed or (row is not None and row.status == STATUS_OK)
            image = session.get(ImageRecord, row.id) if row else ImageRecord(path=problem.path)
            assert image is not None
            _set_error(image, problem.reason, size=None, mtime_ns=None, content_hash=None)
            session.add(image)
        if served_changed:
            index.bump_generation(session)


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


def _vector_id(session: Session, model_id: int, content_hash: str) -> int | None:
    return session.scalar(select(VectorRecord.id).where(
        VectorRecord.model_id == model_id, VectorRecord.content_hash == content_hash))


def _apply_hashed(index: SimilarityIndex, works: list[Work], gone: list[KnownImage], target: _Target,
                  summary: IndexSummary) -> list[Work]:
    """Settle the hashed files whose content is already embedded; return those still to embed.

    Removes from `gone` the rows that turn out to have moved.
    """
    to_embed: list[Work] = []
    if not works:
        return to_embed
    gone_by_hash = {row.content_hash: row for row in gone if row.status == STATUS_OK and row.content_hash}
    with index.writing() as session:
        for work in works:
            row, digest = work.known, work.content_hash
            if digest is None:
                to_embed.append(work)
                continue
            if row is not None and row.status == STATUS_ERROR and row.content_hash == digest:
                session.get(ImageRecord, row.id).mtime_ns = work.file.mtime_ns  # type: ignore[union-attr]
                summary.still_failing += 1
                continue
            vector_id = _vector_id(session, target.model_id, digest)
            if vector_id is None:
                to_embed.append(work)
                continue
            if row is None and digest in gone_by_hash:
                moved = gone_by_hash.pop(digest)
                gone.remove(moved)
                image = session.get(ImageRecord, moved.id)
                summary.moved += 1
            elif row is None:
                image = ImageRecord(path=work.file.path)
                session.add(image)
                summary.added += 1
                summary.copies += 1
            else:
                image = session.get(ImageRecord, row.id)
                if row.content_hash == digest and row.status == STATUS_OK:
                    summary.unchanged += 1
                else:
                    summary.updated += 1
            assert image is not None
            _set_ok(image, work.file, digest, image.width, image.height)
            if target.serving or image.vector_id is None or row is None or row.content_hash != digest:
                image.vector_id = vector_id
        index.bump_generation(session)
    return to_embed


def _remove(index: SimilarityIndex, gone: list[KnownImage], summary: IndexSummary) -> None:
    if not gone:
        return
    with index.writing() as session:
        for chunk_start in range(0, len(gone), 500):
            ids = [row.id for row in gone[chunk_start:chunk_start + 500]]
            session.execute(delete(ImageRecord).where(ImageRecord.id.in_(ids)))
        index.bump_generation(session)
    summary.removed += len(gone)


def _embed(index: SimilarityIndex, target: _Target, works: list[Work], options: IndexOptions,
           summary: IndexSummary, reporter: Reporter) -> None:
    if not works:
        return
    started = time.perf_counter()
    sources = [Source(i, path=work.file.path, content_hash=work.content_hash) for i, work in enumerate(works)]
    head = HeadStart(sources, target.preprocessing, options.max_pixels) if options.workers != 0 else None
    with head or nullcontext():  # decoding starts now; torch and the model load meanwhile
        from retrieval.embedding import Embedder, pick_device, pins_memory
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
    reporter.start("embedding", len(works))
    for results in embed_decoded(chain(early_batches, rest), embedder, workers=workers,
                                 batch_size=options.batch_size):
        with index.writing() as session:
            _write_batch(session, target, [(works[result.key], result) for result in results], summary, reporter)
            index.bump_generation(session)
        summary.embedded += sum(result.vector is not None for result in results)
        reporter.advance(len(results))
    summary.embed_seconds = time.perf_counter() - started


def _store_vectors(session: Session, model_id: int, vectors: list[tuple[str, np.ndarray]]) -> dict[str, int]:
    """The vector id of each content hash: the stored one where the content was embedded before, else a new row
    (one per content, even when copies arrive in the same batch). Two statements, whatever the batch size."""
    ids: dict[str, int] = dict(session.execute(select(VectorRecord.content_hash, VectorRecord.id).where(
        VectorRecord.model_id == model_id, VectorRecord.content_hash.in_({digest for digest, _ in vectors}))).all())
    new: dict[str, bytes] = {}
    for digest, vector in vectors:
        if digest not in ids and digest not in new:
            new[digest] = np.asarray(vector, dtype=np.float32).tobytes()
    if new:
        inserted = session.execute(insert(VectorRecord).returning(VectorRecord.content_hash, VectorRecord.id),
                                   [{"model_id": model_id, "content_hash": digest, "data": data}
                                    for digest, data in new.items()])
        ids.update(inserted.all())
    return ids


def _write_batch(session: Session, target: _Target, batch: list[tuple[Work, SourceResult]], summary: IndexSummary,
                 reporter: Reporter) -> None:
    embedded = [result for _, result in batch if result.vector is not None]
    vector_ids = _store_vectors(session, target.model_id, [(result.content_hash or "", result.vector)
                                                           for result in embedded if result.vector is not None])
    known_ids = [work.known.id for work, _ in batch if work.known is not None]
    known = {image.id: image for image in session.scalars(select(ImageRecord).where(ImageRecord.id.in_(known_ids)))}
    for work, result in batch:
        row = work.known
        image = known[row.id] if row else ImageRecord(path=work.file.path)
        if result.error is not None:
            reporter.warn(work.file.path, result.error)
            _set_error(image, result.error, work.file.size, work.file.mtime_ns, result.content_hash)
            summary.failed += 1
            session.add(image)
            continue
        assert result.content_hash is not None
        vector_id = vector_ids[result.content_hash]
        content_changed = row is None or row.content_hash != result.content_hash or row.status != STATUS_OK
        if row is None:
            summary.added += 1
        elif content_changed:
            summary.updated += 1
        else:
            summary.reembedded += 1
        _set_ok(image, work.file, result.content_hash, result.width, result.height)
        if target.serving or content_changed:
            image.vector_id = vector_id
        session.add(image)


def _set_ok(image: ImageRecord, file: ScannedFile, content_hash: str, width: int | None, height: int | None) -> None:
    image.path = file.path
    image.file_id = file.file_id
    image.size = file.size
    image.mtime_ns = file.mtime_ns
    image.label = file.label
    image.content_hash = content_hash
    image.width = width
    image.height = height
    image.status = STATUS_OK
    image.error = None
    image.indexed_at = utcnow()


def _set_error(image: ImageRecord, reason: str, size: int | None, mtime_ns: int | None,
               content_hash: str | None) -> None:
    image.size = size
    image.mtime_ns = mtime_ns
    image.content_hash = content_hash
    image.status = STATUS_ERROR
    image.error = reason
    image.vector_id = None
    image.indexed_at = utcnow()


def _finish(index: SimilarityIndex, target: _Target) -> None:
    """Switch to the target model once every indexed image has a vector from it; drop unused vectors."""
    with index.writing() as session:
        if not target.serving:
            missing = session.scalar(select(func.count()).select_from(ImageRecord).where(
                ImageRecord.status == STATUS_OK,
                ~select(VectorRecord.id).where(VectorRecord.model_id == target.model_id,
                                               VectorRecord.content_hash == ImageRecord.content_hash).exists()))
            if missing:
                return
            session.execute(update(ImageRecord).where(ImageRecord.status == STATUS_OK).values(
                vector_id=select(VectorRecord.id).where(
                    VectorRecord.model_id == target.model_id,
                    VectorRecord.content_hash == ImageRecord.content_hash).scalar_subquery()))
            state = session.get(IndexState, 1)
            assert state is not None
            state.model_id = target.model_id
        referenced = select(ImageRecord.vector_id).where(ImageRecord.vector_id.is_not(None))
        session.execute(delete(VectorRecord).where(VectorRecord.model_id == target.model_id,
                                                   VectorRecord.id.not_in(referenced)))
        if not target.serving:
            session.execute(delete(VectorRecord).where(VectorRecord.model_id != target.model_id))
            index.bump_generation(session)
