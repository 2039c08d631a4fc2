"""The one owner of an index's database state: every write, the generation, the writer's lock, snapshot reads.

Callers (the index pipeline, the CLI, later a server and a distributed driver) hand it plain data and never open a
write session nor touch the index-state row. Each write method is one transaction; the generation is bumped in
the same transaction as any change to the vectors served, so a FAISS file named after it is never stale unseen.
Writes are upserts against the unique constraints (images by path, vectors by model and content, models by
hash), so two `index` runs against one PostgreSQL database on different folders can run at once and never
duplicate a row; on SQLite the writer's lock still admits one writer at a time.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TypeVar

import numpy as np
from sqlalchemy import ColumnElement, and_, delete, exists, func, select, update
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from retrieval.errors import IndexUnavailableError, IndexWriteError
from retrieval.sources.content_hash import hash_bytes
from retrieval.store.backends import Backend, WriterLock, first_line as _first_line
from retrieval.store.queries import images_under, root_batches
from retrieval.store.records import (UNSET, CopySummary, ImageChange, IndexedImage, KnownImage, ModelFile, ModelInfo,
                                     ServedState, StoredCalibration, Unset)
from retrieval.store.schema import (STATUS_ERROR, STATUS_OK, CalibrationRecord, ChosenKeeper, DistinctPair, ImageRecord,
                                    IndexState, ModelFileRecord, ModelRecord, VectorRecord, utcnow)

T = TypeVar("T")
CHUNK = 500
"""Ids per IN (...) list: well under SQLite's and PostgreSQL's limits on bound parameters."""


def vector_arrays(rows: Sequence[tuple[int, bytes]], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Stored (vector id, float32 bytes) rows as an id array and a (len, dim) float32 array."""
    ids = np.fromiter((vector_id for vector_id, _ in rows), dtype=np.int64, count=len(rows))
    return ids, np.frombuffer(b"".join(data for _, data in rows), dtype=np.float32).reshape(len(rows), dim)


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    """`items` in consecutive slices of at most `CHUNK`, one IN (...) list each."""
    for start in range(0, len(items), CHUNK):
        yield items[start:start + CHUNK]


class Snapshot:
    """One read transaction of the served vectors: what it reads agrees with `state` (the FAISS cache is named after
    that generation)."""

    def __init__(self, store: IndexStore, session: Session) -> None:
        self._store = store
        self._session = session
        self._row = store.state(session)
        self.state = store.served_state(session)

    def served_ids(self) -> np.ndarray:
        """The ids of the served vectors, sorted (int64)."""
        return self._store.served_ids(self._session, self._row)

    def vectors_of(self, ids: Sequence[int], dim: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids and rows (float32) of these stored vectors, in the database's order."""
        return vector_arrays(self._store.rows_of_vectors(self._session, ids), dim)

    def served_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The ids and the rows (float32) of every served vector; the state names a model."""
        assert self.state.model is not None
        return self._store.served_arrays(self._session, self.state.model.id, self.state.model.embedding_dim)


class IndexStore:
    """The database of one index, on either backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._reads = sessionmaker(backend.read_engine, expire_on_commit=False)
        self._writes = sessionmaker(backend.write_engine, expire_on_commit=False)
        self._lock: WriterLock | None = None

    # --- transactions and the writer's lock ----------------------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """One read transaction: every query in the block sees the same committed state (a snapshot). A failure
        of the database (a server gone, the file deleted) is an `IndexUnavailableError`."""
        self.backend.follow(self.prepare)
        try:
            with self._reads() as session, session.begin():
                yield session
        except (OperationalError, DatabaseError) as exc:
            raise IndexUnavailableError(f"cannot read the index database {self.backend.shown}: "
                                        f"{_first_line(exc, self.backend.url)}") from exc

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """`reading`, as the served state and its vectors."""
        with self.reading() as session:
            yield Snapshot(self, session)

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        """One write transaction, committed at the end of the block (rolled back on an exception). A failure of the
        database itself (a full disk, a lost connection) is an `IndexWriteError`; what was committed stays. A
        database deleted since it was opened is an `IndexUnavailableError`, rather than rows written to nowhere."""
        self.backend.follow(self.prepare)
        try:
            with self._writes() as session, session.begin():
                yield session
        except (OperationalError, DatabaseError) as exc:
            raise IndexWriteError(f"cannot write to the index database {self.backend.shown}: "
                                  f"{_first_line(exc, self.backend.url)}; what was committed before is kept") from exc

    @contextmanager
    def writer(self, exclusive: bool = False) -> Iterator[None]:
        """The right to write for a whole command: exclusive (switching the served model) or, where the backend
        allows several writers at once, shared. `IndexUnavailableError` when refused."""
        with self.backend.writer_lock(exclusive) as lock:
            self._lock = lock
            try:
                yield
            finally:
                self._lock = None

    @staticmethod
    def _bump(session: Session) -> None:
        """One more generation, as an increment in SQL: two writers' bumps never overwrite each other."""
        session.execute(update(IndexState).where(IndexState.id == 1).values(generation=IndexState.generation + 1))

    # --- state --------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Ready the database for use: its schema migrated to the current one, its index-state row made. At open,
        and again for a database made anew where the one opened was (its id names another FAISS cache, so nothing
        of the old one is served)."""
        self.backend.to_head()
        self._ensure_state()

    def _ensure_state(self) -> None:
        """Give a new database its index-state row (and so its id). An existing one is only read, so a query
        opening the index never waits for the write lock."""
        try:
            with self._reads() as session, session.begin():
                if session.get(IndexState, 1) is not None:
                    return
            with self._writes() as session, session.begin():
                session.execute(self.backend.insert(IndexState.__table__).values(
                    id=1, generation=0, database_id=uuid.uuid4().hex).on_conflict_do_nothing(index_elements=["id"]))
        except (OperationalError, DatabaseError) as exc:
            raise IndexUnavailableError(f"cannot open the index database {self.backend.shown}: "
                                        f"{_first_line(exc, self.backend.url)}") from exc

    def state(self, session: Session) -> IndexState:
        state = session.get(IndexState, 1)
        assert state is not None, "prepare made the row"
        return state

    def served_model(self) -> ModelInfo | None:
        with self.reading() as session:
            return _model_info(self.state(session).model)

    def served_state(self, session: Session) -> ServedState:
        """The index-state row as plain data."""
        state = self.state(session)
        return ServedState(state.database_id, state.generation, _model_info(state.model), state.index_type,
                           state.max_memory, state.target_recall)

    def holds_images(self) -> bool:
        with self.reading() as session:
            return session.scalar(select(ImageRecord.id).limit(1)) is not None

    # --- models ------------------------------------------------------------------------------------------

    def model_by_id(self, model_id: int) -> ModelInfo | None:
        with self.reading() as session:
            return _model_info(session.get(ModelRecord, model_id))

    def model_row(self, content_hash: str) -> ModelInfo | None:
        with self.reading() as session:
            return _model_info(session.scalar(select(ModelRecord).where(ModelRecord.content_hash == content_hash)))

    def register_model(self, content_hash: str, name: str, spec_json: str, embedding_dim: int) -> ModelInfo:
        """The row of a model, added if new (its file is the index directory's business)."""
        with self._writing() as session:
            session.execute(self.backend.insert(ModelRecord.__table__).values(
                content_hash=content_hash, name=name, spec=spec_json, embedding_dim=embedding_dim,
                created_at=utcnow()).on_conflict_do_nothing(index_elements=["content_hash"]))
            record = _model_info(session.scalar(select(ModelRecord).where(ModelRecord.content_hash == content_hash)))
            assert record is not None
            return record

    def holds_model_file(self, content_hash: str) -> bool:
        return self.model_file_sha256(content_hash) is not None

    def model_file_sha256(self, content_hash: str) -> str | None:
        """The SHA-256 stored with the file of the model `content_hash` (None where none is stored)."""
        with self.reading() as session:
            return session.scalar(select(ModelFileRecord.sha256).where(ModelFileRecord.content_hash == content_hash))

    def add_model_file(self, content_hash: str, data: bytes) -> None:
        """Store the bytes of the file of the model `content_hash`, with their SHA-256, if none are stored."""
        with self._writing() as session:
            session.execute(self.backend.insert(ModelFileRecord.__table__).values(
                content_hash=content_hash, sha256=hash_bytes(data), data=data)
                .on_conflict_do_nothing(index_elements=["content_hash"]))

    def model_file(self, content_hash: str) -> ModelFile | None:
        """The stored file of the model `content_hash`, unchecked (None where none is stored)."""
        with self.reading() as session:
            row = session.execute(select(ModelFileRecord.sha256, ModelFileRecord.data).where(
                ModelFileRecord.content_hash == content_hash)).one_or_none()
            return None if row is None else ModelFile(content_hash, row.sha256, bytes(row.data))

    def serve_first_model(self, model_id: int) -> ModelInfo:
        """Serve `model_id` if the index serves no model yet; the model it serves afterwards (another writer's
        first model, if it was quicker)."""
        with self._writing() as session:
            session.execute(update(IndexState).where(IndexState.id == 1, IndexState.model_id.is_(None))
                            .values(model_id=model_id))
            session.expire_all()
            served = _model_info(self.state(session).model)
            assert served is not None
            return served

    # --- reads for the index pipeline -------------------------------------------------------------------

    def known_images(self, roots: Sequence[str], model_id: int, everything: bool) -> dict[str, KnownImage]:
        """The rows at or under `roots` (every row with `everything`), by path; `has_target_vector` says whether
        the row's vector is one of `model_id`'s."""
        vector = VectorRecord.__table__.alias("vector")
        query = select(ImageRecord.id, ImageRecord.path, ImageRecord.size, ImageRecord.mtime_ns,
                       ImageRecord.content_hash, ImageRecord.status, ImageRecord.file_id, ImageRecord.label,
                       ImageRecord.width, ImageRecord.height, ImageRecord.error, vector.c.model_id).outerjoin(
            vector, vector.c.id == ImageRecord.vector_id)
        queries = [query] if everything else [query.where(images_under(batch)) for batch in root_batches(roots)]
        with self.reading() as session:
            return {row.path: KnownImage(row.id, row.path, row.size, row.mtime_ns, row.content_hash, row.status,
                                         row.model_id == model_id, row.file_id, row.label, row.width, row.height,
                                         row.error)
                    for each in queries for row in session.execute(each)}

    def indexed_count(self) -> int:
        with self.reading() as session:
            return session.scalar(select(func.count()).select_from(ImageRecord).where(
                ImageRecord.status == STATUS_OK)) or 0

    def indexed_sizes(self) -> set[int]:
        with self.reading() as session:
            return set(session.scalars(select(ImageRecord.size).where(ImageRecord.status == STATUS_OK).distinct()))

    def indexed_paths_of_files(self, file_ids: Iterable[str]) -> list[tuple[str, str]]:
        """(path, file id) of the indexed rows of these files (device:inode)."""
        ids = sorted(set(file_ids))
        found: list[tuple[str, str]] = []
        with self.reading() as session:
            for chunk in _chunks(ids):
                found += [(path, file_id) for path, file_id in session.execute(select(
                    ImageRecord.path, ImageRecord.file_id).where(ImageRecord.file_id.in_(chunk),
                                                                ImageRecord.status == STATUS_OK))]
        return found

    def stored_hashes(self, model_id: int, hashes: Iterable[str]) -> set[str]:
        """Which of these contents have a vector of `model_id` already."""
        with self.reading() as session:
            return set(self._vector_ids(session, model_id, set(hashes)))

    # --- writes of the index pipeline -------------------------------------------------------------------

    def set_file_ids(self, file_ids: dict[int, str]) -> None:
        """New device:inode of unchanged rows (a folder restored from a backup, say): no served vector changes."""
        if file_ids:
            with self._writing() as session:
                session.execute(update(ImageRecord), [{"id": row_id, "file_id": new_id}
                                                      for row_id, new_id in file_ids.items()])

    def write_images(self, model_id: int, changes: Sequence[ImageChange],
                     vectors: Sequence[tuple[str, bytes]] = ()) -> None:
        """Store new vectors of `model_id` (content hash, float32 bytes; one per content, whoever stored it first)
        and apply `changes`, all in one transaction: a reader sees the whole batch or none of it."""
        if not changes and not vectors:
            return
        with self._writing() as session:
            if vectors:
                rows = {digest: data for digest, data in vectors}
                self.backend.upsert_rows(session, VectorRecord.__table__, [  # type: ignore[arg-type]
                    {"model_id": model_id, "content_hash": digest, "data": data} for digest, data in rows.items()],
                    ["model_id", "content_hash"], update=False)
            wanted = {change.vector_hash for change in changes if change.vector_hash and not change.keep_vector}
            vector_ids = self._vector_ids(session, model_id, wanted)
            # Whether the served set changes: asked of the rows before they change, and only when the batch adds
            # none that is served (nearly every embedded batch does).
            bump = any(change.status == STATUS_OK for change in changes) or \
                self._ok_rows(session, [change.row_id for change in changes if change.row_id])
            self._apply(session, changes, vector_ids)
            if bump:
                self._bump(session)

    def _vector_ids(self, session: Session, model_id: int, hashes: set[str]) -> dict[str, int]:
        ordered = sorted(hashes)
        ids: dict[str, int] = {}
        for chunk in _chunks(ordered):
            ids.update(session.execute(select(VectorRecord.content_hash, VectorRecord.id).where(
                VectorRecord.model_id == model_id, VectorRecord.content_hash.in_(chunk))).all())
        return ids

    @staticmethod
    def _ok_rows(session: Session, ids: list[int]) -> bool:
        return any(session.scalar(select(func.count()).select_from(ImageRecord).where(
            ImageRecord.id.in_(chunk), ImageRecord.status == STATUS_OK)) for chunk in _chunks(ids))

    def _apply(self, session: Session, changes: Sequence[ImageChange], vector_ids: dict[str, int]) -> None:
        """Updates by id in two executemany groups (with and without a new vector), new paths as one upsert."""
        now = utcnow()
        with_vector, keeping, new = [], [], []
        for change in changes:
            values = {"path": change.path, "status": change.status, "file_id": change.file_id, "size": change.size,
                      "mtime_ns": change.mtime_ns, "label": change.label, "content_hash": change.content_hash,
                      "width": change.width, "height": change.height, "error": change.error, "indexed_at": now}
            if change.status == STATUS_OK and not change.keep_vector:
                assert change.vector_hash is not None
                values["vector_id"] = vector_ids[change.vector_hash]
            elif change.status == STATUS_ERROR:
                values["vector_id"] = None
            if change.row_id is None:
                values.setdefault("vector_id", None)
                new.append(values)
            elif "vector_id" in values:
                with_vector.append({"id": change.row_id, **values})
            else:
                keeping.append({"id": change.row_id, **values})
        for group in (with_vector, keeping):
            if group:
                session.execute(update(ImageRecord), group)
        if new:
            unique = list({values["path"]: values for values in new}.values())  # one upsert may touch a row once
            self.backend.upsert_rows(session, ImageRecord.__table__, unique, ["path"], update=True)  # type: ignore[arg-type]

    def remove_images(self, ids: Sequence[int]) -> None:
        """Forget these rows (files gone from disk); the files themselves are never touched."""
        if not ids:
            return
        with self._writing() as session:
            for chunk in _chunks(ids):
                session.execute(delete(ImageRecord).where(ImageRecord.id.in_(chunk)))
            self._bump(session)

    def finish(self, model_id: int, serving: bool) -> bool:
        """After a run: switch to `model_id` once every indexed image has a vector of it (when it is not served
        yet); drop the vectors no image uses, when no other writer runs. Whether `model_id` is served now."""
        if not serving:
            with self._writing() as session:
                target = and_(VectorRecord.model_id == model_id, VectorRecord.content_hash == ImageRecord.content_hash)
                missing = session.scalar(select(func.count()).select_from(ImageRecord).where(
                    ImageRecord.status == STATUS_OK, ~select(VectorRecord.id).where(target).exists()))
                if missing:
                    return False
                session.execute(update(ImageRecord).where(ImageRecord.status == STATUS_OK).values(
                    vector_id=select(VectorRecord.id).where(target).scalar_subquery()))
                session.execute(update(IndexState).where(IndexState.id == 1).values(model_id=model_id))
                session.execute(delete(VectorRecord).where(VectorRecord.model_id != model_id))
                self._bump(session)
        assert self._lock is not None, "finish runs inside writer()"
        with self._lock.alone() as alone:
            if alone:  # another writer may be about to point a new image at a vector no image uses yet
                with self._writing() as session:
                    referenced = select(ImageRecord.vector_id).where(ImageRecord.vector_id.is_not(None))
                    session.execute(delete(VectorRecord).where(VectorRecord.model_id == model_id,
                                                               VectorRecord.id.not_in(referenced)))
        return True

    # --- decisions ---------------------------------------------------------------------------------------

    def mark_distinct(self, pairs: Iterable[tuple[str, str]]) -> int:
        """Record that each pair of contents (SHA-256s) is not a duplicate; how many were new."""
        ordered = {tuple(sorted(pair)) for pair in pairs if pair[0] != pair[1]}
        if not ordered:
            return 0
        with self._writing() as session:
            before = session.scalar(select(func.count()).select_from(DistinctPair)) or 0
            self.backend.upsert_rows(session, DistinctPair.__table__, [  # type: ignore[arg-type]
                {"first_hash": first, "second_hash": second, "decided_at": utcnow()} for first, second in ordered],
                ["first_hash", "second_hash"], update=False)
            return (session.scalar(select(func.count()).select_from(DistinctPair)) or 0) - before

    def distinct_pairs(self) -> list[tuple[str, str, datetime]]:
        """Every "not duplicates" decision: (first hash, second hash, when), first < second."""
        with self.reading() as session:
            return [(row.first_hash, row.second_hash, row.decided_at) for row in session.execute(
                select(DistinctPair.first_hash, DistinctPair.second_hash, DistinctPair.decided_at)
                .order_by(DistinctPair.decided_at, DistinctPair.id))]

    def mark_kept(self, content_hash: str) -> bool:
        """Record that this content keeps in its duplicate groups; whether the decision is new."""
        with self._writing() as session:
            before = session.scalar(select(func.count()).select_from(ChosenKeeper)) or 0
            self.backend.upsert_rows(session, ChosenKeeper.__table__, [  # type: ignore[arg-type]
                {"content_hash": content_hash, "decided_at": utcnow()}], ["content_hash"], update=False)
            return (session.scalar(select(func.count()).select_from(ChosenKeeper)) or 0) > before

    def chosen_keepers(self) -> list[tuple[str, datetime]]:
        with self.reading() as session:
            return [(row.content_hash, row.decided_at) for row in session.execute(
                select(ChosenKeeper.content_hash, ChosenKeeper.decided_at).order_by(ChosenKeeper.id))]

    # --- calibrations ------------------------------------------------------------------------------------

    def save_calibration(self, model_id: int, model_hash: str, criterion: str, threshold: float,
                         metrics: dict[str, object]) -> StoredCalibration:
        with self._writing() as session:
            row = CalibrationRecord(model_id=model_id, criterion=criterion, threshold=threshold,
                                    metrics=json.dumps(metrics, sort_keys=True))
            session.add(row)
            session.flush()
            return StoredCalibration(model_hash, criterion, threshold, metrics, row.created_at)

    def latest_calibration(self, model_hash: str) -> StoredCalibration | None:
        with self.reading() as session:
            row = session.execute(
                select(CalibrationRecord).join(ModelRecord, CalibrationRecord.model_id == ModelRecord.id)
                .where(ModelRecord.content_hash == model_hash)
                .order_by(CalibrationRecord.created_at.desc(), CalibrationRecord.id.desc()).limit(1)
            ).scalar_one_or_none()
            if row is None:
                return None
            return StoredCalibration(model_hash, row.criterion, row.threshold, json.loads(row.metrics),
                                     row.created_at)

    # --- served vectors (for the FAISS cache and search) ------------------------------------------------

    @staticmethod
    def _served(model_id: int | None) -> ColumnElement[bool]:
        """The vectors of the served model that some indexed image uses."""
        used = exists().where(and_(ImageRecord.vector_id == VectorRecord.id, ImageRecord.status == STATUS_OK))
        return and_(VectorRecord.model_id == model_id, used)

    def served_ids(self, session: Session, state: IndexState) -> np.ndarray:
        """The ids of the served vectors, sorted (int64)."""
        ids = session.scalars(select(VectorRecord.id).where(self._served(state.model_id))
                              .order_by(VectorRecord.id)).all()
        return np.fromiter(ids, dtype=np.int64, count=len(ids))

    def rows_of_vectors(self, session: Session, ids: Sequence[int]) -> list[tuple[int, bytes]]:
        """(vector id, float32 bytes) of these vectors."""
        rows: list[tuple[int, bytes]] = []
        ordered = sorted(ids)
        for chunk in _chunks(ordered):
            rows += [(row.id, row.data) for row in session.execute(select(VectorRecord.id, VectorRecord.data).where(
                VectorRecord.id.in_(chunk)))]
        return rows

    def vectors_between(self, first: int, last: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids and rows (float32) of the stored vectors whose ids lie in first..last, by id: a block of vectors
        in one query, for a reader that goes through many (dedup's pair search)."""
        with self.reading() as session:
            return vector_arrays([(row.id, row.data) for row in session.execute(
                select(VectorRecord.id, VectorRecord.data).where(VectorRecord.id.between(first, last))
                .order_by(VectorRecord.id))], dim)

    def set_search_settings(self, *, index_type: str | None | Unset = UNSET, max_memory: int | None | Unset = UNSET,
                            target_recall: float | None | Unset = UNSET) -> None:
        """Record what the user asked of the vector index (None: back to the default). Served vectors do not
        change, so the generation stays; the FAISS cache notices the settings it was built under differ."""
        values = {name: value for name, value in (("index_type", index_type), ("max_memory", max_memory),
                                                  ("target_recall", target_recall)) if value is not UNSET}
        if values:
            with self._writing() as session:
                session.execute(update(IndexState).where(IndexState.id == 1).values(**values))

    def served_arrays(self, session: Session, model_id: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """The ids and the rows (float32) of every served vector (`model_id` being the served model's)."""
        return vector_arrays([(row.id, row.data) for row in session.execute(
            select(VectorRecord.id, VectorRecord.data).where(self._served(model_id)))], dim)

    def indexed_images(self, roots: Sequence[str] | None = None) -> list[IndexedImage]:
        """Every indexed image, or those at or under `roots` (absolute paths)."""
        query = select(ImageRecord.path, ImageRecord.width, ImageRecord.height, ImageRecord.mtime_ns,
                       ImageRecord.vector_id, ImageRecord.id, ImageRecord.file_id, ImageRecord.size,
                       ImageRecord.content_hash).where(
            ImageRecord.status == STATUS_OK)
        queries = [query.where(images_under(batch)) for batch in root_batches(roots)] if roots else [query]
        with self.reading() as session:
            return [IndexedImage(*row) for each in queries for row in session.execute(each)]

    def image_by_id(self, image_id: int) -> IndexedImage | None:
        """The indexed image `image_id` (None if there is none, or it failed)."""
        with self.reading() as session:
            image = session.get(ImageRecord, image_id)
            return _indexed(image) if image is not None and image.status == STATUS_OK else None

    def vector_of_path(self, path: str) -> bytes | None:
        """The served vector (float32 bytes) of the indexed image at `path`, if there is one."""
        with self.reading() as session:
            return session.scalar(select(VectorRecord.data).join(ImageRecord, ImageRecord.vector_id == VectorRecord.id)
                                  .where(ImageRecord.path == path, ImageRecord.status == STATUS_OK))

    def export_rows(self) -> list[dict[str, object]]:
        """Every indexed image as an export writes it: path, image_id, label, width, height, size, mtime_ns,
        content_hash and its vector_id, by path."""
        query = select(ImageRecord.path, ImageRecord.id.label("image_id"), ImageRecord.label, ImageRecord.width,
                       ImageRecord.height, ImageRecord.size, ImageRecord.mtime_ns, ImageRecord.content_hash,
                       ImageRecord.vector_id).where(ImageRecord.status == STATUS_OK).order_by(ImageRecord.path)
        with self.reading() as session:
            return [dict(row._mapping) for row in session.execute(query)]

    def images_of_vectors(self, vector_ids: Sequence[int]) -> dict[int, list[ImageRecord]]:
        """The indexed images of each of these vectors (copies of one content share it), by path."""
        found: dict[int, list[ImageRecord]] = {}
        ordered = sorted(set(vector_ids))
        with self.reading() as session:
            for chunk in _chunks(ordered):
                for image in session.scalars(select(ImageRecord).where(
                        ImageRecord.vector_id.in_(chunk), ImageRecord.status == STATUS_OK)):
                    found.setdefault(image.vector_id, []).append(image)  # type: ignore[arg-type]
        for images in found.values():
            images.sort(key=lambda image: image.path)
        return found


def _model_info(record: ModelRecord | None) -> ModelInfo | None:
    if record is None:
        return None
    return ModelInfo(record.id, record.content_hash, record.name, record.spec, record.embedding_dim, record.created_at)


def _indexed(image: ImageRecord) -> IndexedImage:
    return IndexedImage(image.path, image.width, image.height, image.mtime_ns, image.vector_id,  # type: ignore[arg-type]
                        image.id, image.file_id, image.size, image.content_hash)


COPY_CHUNK = 2000
"""Rows a copy reads at a time, except model files (megabytes each), read one at a time."""
_COPIED = (ModelRecord, ModelFileRecord, VectorRecord, ImageRecord, CalibrationRecord, DistinctPair, ChosenKeeper)
"""Tables in an order that satisfies their foreign keys."""


def copy_index_database(source: IndexStore, target: IndexStore) -> CopySummary:
    """Copy every row of `source` into the empty `target` (ids kept: a vector's id is its FAISS id), from one
    snapshot of the source, with nothing re-embedded; the target serves what the source serves, under its own
    database id. `IndexUnavailableError` if the target already holds an index."""
    counts: dict[str, int] = {}
    with target.writer(exclusive=True), source.reading() as reading:
        with target.reading() as session:
            if session.scalar(select(ModelRecord.id).limit(1)) is not None or \
                    session.scalar(select(ImageRecord.id).limit(1)) is not None:
                raise IndexUnavailableError(f"{target.backend.shown} already holds an index: copy into an empty "
                                            "database")
        for model in _COPIED:
            table = model.__table__
            columns = [column.name for column in table.columns]  # type: ignore[attr-defined]
            counts[table.name] = 0  # type: ignore[attr-defined]
            last, chunk = 0, 1 if model is ModelFileRecord else COPY_CHUNK
            while True:
                rows = [dict(row._mapping) for row in reading.execute(
                    select(*table.columns).where(table.c.id > last).order_by(table.c.id).limit(chunk))]  # type: ignore[attr-defined]
                if not rows:
                    break
                with target._writing() as session:
                    session.execute(table.insert(), [{name: row[name] for name in columns} for row in rows])  # type: ignore[attr-defined]
                counts[table.name] += len(rows)  # type: ignore[attr-defined]
                last = rows[-1]["id"]
        state = source.state(reading)
        with target._writing() as session:
            session.execute(update(IndexState).where(IndexState.id == 1).values(
                model_id=state.model_id, generation=state.generation + 1))
            target.backend.after_explicit_ids(session, [model.__tablename__ for model in _COPIED])
    return CopySummary(counts["models"], counts["vectors"], counts["images"], counts["calibrations"],
                       counts["distinct_pairs"])
