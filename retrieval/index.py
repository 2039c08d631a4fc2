"""An index directory: the SQLite database, the FAISS file and the model files, kept in step.

Layout of the directory::

    index.db                 metadata and vectors (SQLite, schema by Alembic)
    vectors-<generation>.faiss   FAISS index of the served vectors at that database generation
    models/<hash>.safetensors    every model the index has used
    lock                     held by the one process writing to the index

The database is the source of truth. The FAISS file is named after the database generation it
was built from; a missing or older one (after a crash, say) is rebuilt from the stored vectors,
so the two never disagree after a restart.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import Engine, and_, exists, select
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from retrieval.errors import IndexNotFoundError, IndexUnavailableError, ModelError
from retrieval.store.database import create_sqlite_engine, is_at_head, upgrade_to_head
from retrieval.store.schema import STATUS_OK, ImageRecord, IndexState, ModelRecord, VectorRecord
from retrieval.store.vector_index import VectorIndex

if TYPE_CHECKING:
    from retrieval.model import EmbeddingModel
    from retrieval.model_spec import ModelHeader, ModelSpec

DB_NAME = "index.db"
MODELS_DIR = "models"
LOCK_NAME = "lock"
MIGRATE_LOCK_NAME = "migrate.lock"


@dataclass(frozen=True)
class Neighbour:
    """One search result."""

    rank: int
    distance: float
    path: str
    label: str | None


class SimilarityIndex:
    """Open index directory. Use `open_index` / `create_index` to get one."""

    def __init__(self, root: Path, engine: Engine) -> None:
        self.root = root
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self.write_sessions = sessionmaker(engine.execution_options(sqlite_begin="IMMEDIATE"),
                                           expire_on_commit=False)
        """For transactions that write: they take the database's write lock when they begin."""
        self._vectors: tuple[int, VectorIndex] | None = None

    # --- model -----------------------------------------------------------------------------

    def model_record(self, session: Session) -> ModelRecord | None:
        state = session.get(IndexState, 1)
        return state.model if state is not None else None

    def model_path(self, content_hash: str) -> Path:
        return self.root / MODELS_DIR / f"{content_hash}.safetensors"

    def load_model(self) -> EmbeddingModel:
        """The model the index serves, from the index's own copy of it."""
        with self.sessions() as session:
            record = self.model_record(session)
        if record is None:
            raise IndexNotFoundError(f"the index at {self.root} holds no images yet")
        from retrieval.model import load_model

        model = load_model(self.model_path(record.content_hash))
        if model.content_hash != record.content_hash:
            raise ModelError(f"model file of {self.root} does not match the hash the index was built with")
        return model

    def register_model(self, session: Session, model: EmbeddingModel) -> ModelRecord:
        """The database row of `model`, adding it (and its file in the index directory) if new."""
        return self._register(session, model.content_hash, model.spec, model.save)

    def register_model_file(self, session: Session, path: Path, header: ModelHeader) -> ModelRecord:
        """As `register_model` for the model in a file with this header, copied without loading it."""
        return self._register(session, header.content_hash, header.spec, lambda target: shutil.copyfile(path, target))

    def _register(self, session: Session, content_hash: str, spec: ModelSpec,
                  write: Callable[[Path], object]) -> ModelRecord:
        record = session.scalar(select(ModelRecord).where(ModelRecord.content_hash == content_hash))
        if record is not None:
            return record
        path = self.model_path(content_hash)
        path.parent.mkdir(exist_ok=True)
        if not path.exists():
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            write(tmp)
            os.replace(tmp, path)
        record = ModelRecord(content_hash=content_hash, name=spec.name, spec=spec.to_json(),
                             embedding_dim=spec.embedding_dim)
        session.add(record)
        session.flush()
        return record

    # --- writing -----------------------------------------------------------------------------

    @contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Exclusive right to write; a second writer is refused rather than queued."""
        with _locked(self.root / LOCK_NAME, wait=False):
            yield

    @staticmethod
    def bump_generation(session: Session) -> None:
        """Mark the served vectors as changed, inside the transaction that changes them."""
        state = session.get(IndexState, 1)
        assert state is not None
        state.generation += 1

    # --- vectors and search ------------------------------------------------------------------

    def _vector_file(self, generation: int) -> Path:
        return self.root / f"vectors-{generation}.faiss"

    def vector_index(self) -> VectorIndex:
        """The FAISS index for the current database generation, from its file or rebuilt."""
        with self.sessions() as session, session.begin():
            state = session.get(IndexState, 1)
            assert state is not None
            generation = state.generation
            if self._vectors is not None and self._vectors[0] == generation:
                return self._vectors[1]
            path = self._vector_file(generation)
            if path.exists():
                vectors = VectorIndex.load(path)
            else:
                vectors = self._rebuild(session, state)
                self._save_vector_file(vectors, generation)
        self._vectors = (generation, vectors)
        return vectors

    def _rebuild(self, session: Session, state: IndexState) -> VectorIndex:
        if state.model is None:
            return VectorIndex.build(1, np.empty(0, np.int64), np.empty((0, 1), np.float32))
        ids, data = self._served_vectors(session, state)
        return VectorIndex.build(state.model.embedding_dim, ids, data)

    @staticmethod
    def _served_vectors(session: Session, state: IndexState) -> tuple[np.ndarray, np.ndarray]:
        """Ids and rows of the vectors of the served model that some indexed image uses."""
        assert state.model is not None
        served = exists().where(and_(ImageRecord.vector_id == VectorRecord.id, ImageRecord.status == STATUS_OK))
        rows = session.execute(
            select(VectorRecord.id, VectorRecord.data).where(VectorRecord.model_id == state.model_id, served)
        ).all()
        ids = np.fromiter((row.id for row in rows), dtype=np.int64, count=len(rows))
        data = np.frombuffer(b"".join(row.data for row in rows), dtype=np.float32)
        return ids, data.reshape(len(rows), state.model.embedding_dim)

    def served_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Ids and rows (float32, L2-normalised) of every vector an indexed image uses, from the database."""
        with self.sessions() as session:
            state = session.get(IndexState, 1)
            if state is None or state.model is None:
                raise IndexNotFoundError(f"the index at {self.root} holds no images yet")
            return self._served_vectors(session, state)

    def _save_vector_file(self, vectors: VectorIndex, generation: int) -> None:
        """Write the file for `generation` and drop older ones; a read-only index just skips it."""
        try:
            vectors.save(self._vector_file(generation))
        except (OSError, RuntimeError):
            return
        for stale in self.root.glob("vectors-*.faiss"):
            if stale.name != self._vector_file(generation).name:
                stale.unlink(missing_ok=True)

    def refresh_vector_file(self) -> None:
        """Bring the FAISS file up to the database (after a write); nothing to do when it is."""
        with self.sessions() as session:
            state = session.get(IndexState, 1)
            assert state is not None
            if self._vector_file(state.generation).exists():
                return
        self.vector_index()

    def search(self, queries: np.ndarray, k: int) -> list[list[Neighbour]]:
        """The `k` nearest indexed images of each query vector, nearest first.

        Copies of one file share a vector; each of them is listed.
        """
        vectors = self.vector_index()
        distances, ids = vectors.search(queries, k)
        wanted = {int(i) for i in ids.ravel() if i >= 0}
        by_vector: dict[int, list[ImageRecord]] = {}
        with self.sessions() as session:
            for chunk in _chunks(sorted(wanted), 500):
                rows = session.scalars(select(ImageRecord).where(
                    ImageRecord.vector_id.in_(chunk), ImageRecord.status == STATUS_OK))
                for image in rows:
                    by_vector.setdefault(image.vector_id, []).append(image)  # type: ignore[arg-type]
        results = []
        for row_d, row_i in zip(distances, ids):
            hits: list[Neighbour] = []
            for distance, vector_id in zip(row_d, row_i):
                for image in sorted(by_vector.get(int(vector_id), []), key=lambda im: im.path):
                    if len(hits) < k:
                        hits.append(Neighbour(len(hits) + 1, float(distance), image.path, image.label))
            results.append(hits)
        return results


def _chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def open_index(root: Path) -> SimilarityIndex:
    """Open an existing index directory (migrating its schema to the current version)."""
    if not (root / DB_NAME).is_file():
        raise IndexNotFoundError(f"no simsearch index at {root} (run `simsearch index PATH` first)")
    return _open(root)


def create_index(root: Path) -> SimilarityIndex:
    """Open the index directory `root`, creating it if needed."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IndexUnavailableError(f"cannot create index directory {root}: {exc.strerror}") from exc
    return _open(root)


@contextmanager
def _locked(path: Path, wait: bool) -> Iterator[None]:
    """Hold an exclusive POSIX record lock on `path`.

    Record locks (lockf) belong to the process, unlike flock locks which forked DataLoader
    workers would inherit and keep alive after the writer itself was killed.
    """
    try:
        handle = open(path, "a+b")
    except OSError as exc:
        raise IndexUnavailableError(f"cannot write to index directory {path.parent}: {exc.strerror}") from exc
    with handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise IndexUnavailableError(f"another simsearch process is writing to {path.parent}") from exc
            raise
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)


def _open(root: Path) -> SimilarityIndex:
    if not os.access(root, os.R_OK | os.X_OK):
        raise IndexUnavailableError(f"cannot read index directory {root}: permission denied")
    engine = create_sqlite_engine(root / DB_NAME)
    if not is_at_head(engine):
        with _locked(root / MIGRATE_LOCK_NAME, wait=True):
            upgrade_to_head(engine)
    index = SimilarityIndex(root, engine)
    try:
        with index.write_sessions() as session, session.begin():
            if session.get(IndexState, 1) is None:
                session.add(IndexState(id=1, generation=0))
    except IntegrityError:
        pass  # another process (a query beside the first `index`, say) added the row first: it is there
    except (OperationalError, DatabaseError) as exc:
        raise IndexUnavailableError(f"cannot open the index database in {root}: {exc.orig}") from exc
    return index
