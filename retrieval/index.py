"""An index directory: the SQLite database, the FAISS file and the model files, kept in step.

Layout of the directory::

    index.db (+ -wal, -shm)      metadata and vectors (SQLite, schema by Alembic): the index itself
    models/<hash>.safetensors    every model the index has used
    vectors-<db id>-<generation>.faiss   FAISS index of the served vectors: a cache of the database
    lock, migrate.lock           held by the one process writing to (or migrating) the index

The database is the source of truth. The FAISS file is named after the database it was built from (an id made
with the database) and its generation; a missing, stale (another database's, an older generation's) or
unreadable one is rebuilt from the stored vectors, and one that does not hold as many vectors as the database
serves is never used, so the two never disagree.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import ColumnElement, Engine, and_, exists, func, select
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from retrieval.atomic import atomic_write, remove_orphaned_temporaries
from retrieval.errors import IndexNotFoundError, IndexUnavailableError, IndexWriteError, ModelError, OutputWriteError
from retrieval.store.database import create_sqlite_engine, is_at_head, upgrade_to_head
from retrieval.store.schema import STATUS_OK, ImageRecord, IndexState, ModelRecord, VectorRecord
from retrieval.store.vector_index import VectorIndex
from retrieval.unit_distance import DISTANCE_DIGITS

if TYPE_CHECKING:
    from retrieval.model import EmbeddingModel
    from retrieval.model_spec import ModelHeader, ModelSpec

DB_NAME = "index.db"
MODELS_DIR = "models"
LOCK_NAME = "lock"
MIGRATE_LOCK_NAME = "migrate.lock"
VECTOR_FILES = re.compile(r"vectors-[0-9a-f]+-\d+\.faiss")
MODEL_FILES = re.compile(r"[0-9a-f]{64}\.safetensors")


@dataclass(frozen=True)
class Neighbour:
    """One search result; `image_id` names the indexed image (for a page or an API to refer to it)."""

    rank: int
    distance: float
    path: str
    label: str | None
    image_id: int
    file_id: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    """The file as it was indexed (device:inode, size, mtime), to tell whether its path still holds it."""

    def to_dict(self) -> dict[str, object]:
        return {"rank": self.rank, "distance": round(self.distance, DISTANCE_DIGITS), "path": self.path,
                "label": self.label, "image_id": self.image_id}


class SimilarityIndex:
    """Open index directory. Use `open_index` / `create_index` to get one."""

    def __init__(self, root: Path, engine: Engine) -> None:
        self.root = root
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(engine.execution_options(sqlite_begin="IMMEDIATE"),
                                            expire_on_commit=False)
        self._vectors: tuple[str, VectorIndex] | None = None

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """One write transaction, committed at the end of the block (rolled back on an exception).

        It takes the database's write lock when it begins. A failure of the database itself (a full disk, an
        I/O error) is an `IndexWriteError`: the transaction is lost, what was committed before stays.
        """
        try:
            with self._write_sessions() as session, session.begin():
                yield session
        except (OperationalError, DatabaseError) as exc:
            raise IndexWriteError(f"cannot write to the index database in {self.root}: {exc.orig}; what was "
                                  "committed before is kept") from exc

    def _ensure_state(self) -> None:
        """Give a new database its index-state row (and so its id). An existing one is only read: a query opening
        the index neither waits for the write lock nor counts as a writer to checkpoint at exit."""
        with self.sessions() as session:
            if session.get(IndexState, 1) is not None:
                return
        try:
            with self._write_sessions() as session, session.begin():
                if session.get(IndexState, 1) is None:
                    session.add(IndexState(id=1, generation=0, database_id=uuid.uuid4().hex))
        except IntegrityError:
            pass  # another process (a query beside the first `index`, say) added the row first: it is there

    def holds_images(self) -> bool:
        """Whether any file (indexed or failed) is recorded."""
        with self.sessions() as session:
            return session.scalar(select(ImageRecord.id).limit(1)) is not None

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
        def copy(target: Path) -> None:
            atomic_write(target, lambda temporary: shutil.copyfile(path, temporary), "model file")

        return self._register(session, header.content_hash, header.spec, copy)

    def _register(self, session: Session, content_hash: str, spec: ModelSpec,
                  write: Callable[[Path], object]) -> ModelRecord:
        """The row of the model, added with its file (`write(path)` writes it atomically) when it is new."""
        record = session.scalar(select(ModelRecord).where(ModelRecord.content_hash == content_hash))
        if record is not None:
            return record
        path = self.model_path(content_hash)
        path.parent.mkdir(exist_ok=True)
        if not path.exists():
            write(path)
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

    def _vector_file(self, state: IndexState) -> Path:
        return self.root / f"vectors-{state.database_id}-{state.generation}.faiss"

    def vector_index(self) -> VectorIndex:
        """The FAISS index of the database as it is now: from its file when that matches, else rebuilt (and
        saved) from the stored vectors."""
        with self.sessions() as session, session.begin():
            state = session.get(IndexState, 1)
            assert state is not None
            path = self._vector_file(state)
            if self._vectors is not None and self._vectors[0] == path.name:
                return self._vectors[1]
            vectors = self._matching_file(session, state, path)
            if vectors is None:
                vectors = self._rebuild(session, state)
                self._save_vector_file(vectors, path)
        self._vectors = (path.name, vectors)
        return vectors

    def _matching_file(self, session: Session, state: IndexState, path: Path) -> VectorIndex | None:
        """The FAISS file at `path` if it can be read and holds what the database serves, else None."""
        if not path.is_file():
            return None
        try:
            vectors = VectorIndex.load(path)
        except IndexUnavailableError:
            return None
        dim = state.model.embedding_dim if state.model is not None else 1
        if vectors.dim != dim or len(vectors) != self._served_count(session, state):
            return None
        return vectors

    def _rebuild(self, session: Session, state: IndexState) -> VectorIndex:
        if state.model is None:
            return VectorIndex.build(1, np.empty(0, np.int64), np.empty((0, 1), np.float32))
        ids, data = self._served_vectors(session, state)
        return VectorIndex.build(state.model.embedding_dim, ids, data)

    @staticmethod
    def _served(state: IndexState) -> ColumnElement[bool]:
        """The vectors of the served model that some indexed image uses."""
        used = exists().where(and_(ImageRecord.vector_id == VectorRecord.id, ImageRecord.status == STATUS_OK))
        return and_(VectorRecord.model_id == state.model_id, used)

    @classmethod
    def _served_count(cls, session: Session, state: IndexState) -> int:
        if state.model is None:
            return 0
        return session.scalar(select(func.count()).select_from(VectorRecord).where(cls._served(state))) or 0

    @classmethod
    def _served_vectors(cls, session: Session, state: IndexState) -> tuple[np.ndarray, np.ndarray]:
        """Ids and rows of the served vectors."""
        assert state.model is not None
        rows = session.execute(select(VectorRecord.id, VectorRecord.data).where(cls._served(state))).all()
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

    def _save_vector_file(self, vectors: VectorIndex, path: Path) -> None:
        """Write the FAISS file and drop the stale ones. It is a cache: a read-only index directory or a full disk
        just leave it unwritten, and the next reader rebuilds it."""
        try:
            vectors.save(path)
        except OutputWriteError:
            return
        for stale in self.root.glob("vectors-*.faiss"):
            if stale.name != path.name:
                stale.unlink(missing_ok=True)

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
                        hits.append(Neighbour(len(hits) + 1, float(distance), image.path, image.label, image.id,
                                              image.file_id, image.size, image.mtime_ns))
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
        index._ensure_state()
    except (OperationalError, DatabaseError) as exc:
        raise IndexUnavailableError(f"cannot open the index database in {root}: {exc.orig}") from exc
    remove_orphaned_temporaries(root, VECTOR_FILES)
    remove_orphaned_temporaries(root / MODELS_DIR, MODEL_FILES)
    return index
