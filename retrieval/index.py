"""An index: its database (`retrieval.store`), and its directory with the model files and the FAISS cache, in step.

Layout of the directory::

    index.db (+ -wal, -shm)      metadata and vectors (SQLite, schema by Alembic), unless the database is
                                 elsewhere (`--db postgresql+psycopg://...`)
    models/<hash>.safetensors    every model the index has used
    vectors-<db id>-<generation>.faiss   FAISS index of the served vectors: a cache of the database
    lock, migrate.lock           held by the one process writing to (or migrating) a SQLite index

The database is the source of truth. The FAISS file is named after the database it was built from (an id made
with the database) and its generation; a missing, stale (another database's, an older generation's) or
unreadable one is rebuilt from the stored vectors, and one that does not hold as many vectors as the database
serves is never used, so the two never disagree.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import Session

from retrieval.atomic import atomic_write, remove_orphaned_temporaries
from retrieval.errors import IndexNotFoundError, IndexUnavailableError, ModelError, OutputWriteError
from retrieval.store.backends import SQLITE_NAME, Backend, database_url, open_backend, shown_url
from retrieval.store.database import is_at_head, upgrade_to_head
from retrieval.store.index_store import IndexStore
from retrieval.store.schema import IndexState, ModelRecord
from retrieval.store.vector_index import VectorIndex
from retrieval.unit_distance import DISTANCE_DIGITS

if TYPE_CHECKING:
    from retrieval.model import EmbeddingModel
    from retrieval.model_spec import ModelHeader, ModelSpec

DB_NAME = SQLITE_NAME
MODELS_DIR = "models"
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
    """Open index. Use `open_index` / `create_index` to get one."""

    def __init__(self, root: Path, backend: Backend) -> None:
        self.root = root
        self.backend = backend
        self.store = IndexStore(backend)
        self._vectors: tuple[str, VectorIndex] | None = None

    @property
    def engine(self) -> Engine:
        return self.backend.engine

    def holds_images(self) -> bool:
        """Whether any file (indexed or failed) is recorded."""
        return self.store.holds_images()

    # --- model -----------------------------------------------------------------------------

    def served_model(self) -> ModelRecord | None:
        return self.store.served_model()

    def model_path(self, content_hash: str) -> Path:
        return self.root / MODELS_DIR / f"{content_hash}.safetensors"

    def load_model(self) -> EmbeddingModel:
        """The model the index serves, from the index's own copy of it."""
        record = self.served_model()
        if record is None:
            raise IndexNotFoundError(f"the index at {self.root} holds no images yet")
        from retrieval.model import load_model

        path = self.model_path(record.content_hash)
        if not path.is_file():
            raise ModelError(f"{path} is missing: the database {self.backend.shown} serves model "
                             f"{record.content_hash[:12]}, whose file this index directory lacks (copy it from the "
                             "directory that indexed with it)")
        model = load_model(path)
        if model.content_hash != record.content_hash:
            raise ModelError(f"model file of {self.root} does not match the hash the index was built with")
        return model

    def register_model(self, model: EmbeddingModel) -> ModelRecord:
        """The database row of `model`, adding it (and its file in the index directory) if new."""
        return self._register(model.content_hash, model.spec, model.save)

    def register_model_file(self, path: Path, header: ModelHeader) -> ModelRecord:
        """As `register_model` for the model in a file with this header, copied without loading it."""
        def copy(target: Path) -> None:
            atomic_write(target, lambda temporary: shutil.copyfile(path, temporary), "model file")

        return self._register(header.content_hash, header.spec, copy)

    def _register(self, content_hash: str, spec: ModelSpec, write: Callable[[Path], object]) -> ModelRecord:
        """The row of the model, added with its file (`write(path)` writes it atomically) when it is new. The file
        comes first: a row never names a model this directory cannot load."""
        path = self.model_path(content_hash)
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            write(path)
        return self.store.register_model(content_hash, spec.name, spec.to_json(), spec.embedding_dim)

    # --- vectors and search ------------------------------------------------------------------

    def _vector_file(self, state: IndexState) -> Path:
        return self.root / f"vectors-{state.database_id}-{state.generation}.faiss"

    def vector_index(self) -> VectorIndex:
        """The FAISS index of the database as it is now: from its file when that matches, else rebuilt (and
        saved) from the stored vectors."""
        with self.store.reading() as session:
            state = self.store.state(session)
            path = self._vector_file(state)
            if self._vectors is not None and self._vectors[0] == path.name:
                return self._vectors[1]
            vectors = self._matching_file(session, state, path)
            if vectors is None:
                vectors = self._rebuild(session, state)
                self._save_vector_file(vectors, path, state.database_id)
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
        if vectors.dim != dim or len(vectors) != self.store.served_count(session, state):
            return None
        return vectors

    def _rebuild(self, session: Session, state: IndexState) -> VectorIndex:
        if state.model is None:
            return VectorIndex.build(1, np.empty(0, np.int64), np.empty((0, 1), np.float32))
        ids, data = self._served_vectors(session, state)
        return VectorIndex.build(state.model.embedding_dim, ids, data)

    def _served_vectors(self, session: Session, state: IndexState) -> tuple[np.ndarray, np.ndarray]:
        """Ids and rows of the served vectors."""
        assert state.model is not None
        rows = self.store.served_rows(session, state)
        ids = np.fromiter((vector_id for vector_id, _ in rows), dtype=np.int64, count=len(rows))
        data = np.frombuffer(b"".join(data for _, data in rows), dtype=np.float32)
        return ids, data.reshape(len(rows), state.model.embedding_dim)

    def served_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Ids and rows (float32, L2-normalised) of every vector an indexed image uses, from the database."""
        with self.store.reading() as session:
            state = self.store.state(session)
            if state.model is None:
                raise IndexNotFoundError(f"the index at {self.root} holds no images yet")
            return self._served_vectors(session, state)

    def _save_vector_file(self, vectors: VectorIndex, path: Path, database_id: str) -> None:
        """Write the FAISS file and drop this database's stale ones (a directory may serve two databases, a SQLite
        index and its copy in PostgreSQL, say). It is a cache: a read-only index directory or a full disk just
        leave it unwritten, and the next reader rebuilds it."""
        try:
            vectors.save(path)
        except OutputWriteError:
            return
        for stale in self.root.glob(f"vectors-{database_id}-*.faiss"):
            if stale.name != path.name:
                stale.unlink(missing_ok=True)

    def search(self, queries: np.ndarray, k: int) -> list[list[Neighbour]]:
        """The `k` nearest indexed images of each query vector, nearest first.

        Copies of one file share a vector; each of them is listed.
        """
        vectors = self.vector_index()
        distances, ids = vectors.search(queries, k)
        by_vector = self.store.images_of_vectors([int(i) for i in ids.ravel() if i >= 0])
        results = []
        for row_d, row_i in zip(distances, ids):
            hits: list[Neighbour] = []
            for distance, vector_id in zip(row_d, row_i):
                for image in by_vector.get(int(vector_id), []):
                    if len(hits) < k:
                        hits.append(Neighbour(len(hits) + 1, float(distance), image.path, image.label, image.id,
                                              image.file_id, image.size, image.mtime_ns))
            results.append(hits)
        return results


def open_index(root: Path, db: str | None = None) -> SimilarityIndex:
    """Open an existing index (migrating its schema to the current version). Its database is `db` (a URL),
    else `$SIMSEARCH_DB`, else `root/index.db`."""
    url = database_url(root, db)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        raise IndexNotFoundError(f"no simsearch index at {root} (run `simsearch index PATH` first)")
    if not root.is_dir():
        raise IndexNotFoundError(f"no index directory at {root} for the database {shown_url(url)} "
                                 "(run `simsearch index PATH --db URL` to make one)")
    return _open(root, url)


def create_index(root: Path, db: str | None = None) -> SimilarityIndex:
    """Open the index at `root` (its database as `open_index` says), creating the directory and database if
    needed. A database server is reached before the directory is made, so a wrong URL leaves nothing behind."""
    url = database_url(root, db)
    backend = None if url.get_backend_name() == "sqlite" else open_backend(root, url)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IndexUnavailableError(f"cannot create index directory {root}: {exc.strerror}") from exc
    return _open(root, url, backend)


def _open(root: Path, url: URL, backend: Backend | None = None) -> SimilarityIndex:
    if not os.access(root, os.R_OK | os.X_OK):
        raise IndexUnavailableError(f"cannot read index directory {root}: permission denied")
    backend = backend or open_backend(root, url)
    try:
        if not is_at_head(backend.engine):
            with backend.migration_lock():
                upgrade_to_head(backend.engine)
    except (OperationalError, DatabaseError) as exc:
        raise IndexUnavailableError(f"cannot open the index database {backend.shown}: {exc.orig}") from exc
    index = SimilarityIndex(root, backend)
    index.store.ensure_state()
    remove_orphaned_temporaries(root, VECTOR_FILES)
    remove_orphaned_temporaries(root / MODELS_DIR, MODEL_FILES)
    return index
