"""An index: its database (`retrieval.store`), and its directory with the model files and the FAISS cache, in step.

Layout of the directory::

    index.db (+ -wal, -shm)      metadata and vectors (SQLite, schema by Alembic), unless the database is
                                 elsewhere (`--db postgresql+psycopg://...`)
    models/<hash>.safetensors    every model the index has used
    vectors-<db id>-<generation>.faiss   FAISS index of the served vectors: a cache of the database
    vectors-<db id>-<generation>.json    what that FAISS index is (kind, training, tuning, counts)
    lock, migrate.lock           held by the one process writing to (or migrating) a SQLite index

The database is the source of truth. The FAISS file is named after the database it was built from (an id made
with the database) and its generation; one that is missing, unreadable, another database's or not what its
description says is never served; an older generation's is grown to the database or rebuilt from the stored
vectors (`retrieval.vector_cache`), so the two never disagree.
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

from retrieval.atomic import atomic_write, remove_orphaned_temporaries
from retrieval.errors import IndexNotFoundError, IndexUnavailableError, ModelError
from retrieval.faiss_factory import parse_description
from retrieval.store.backends import Backend, database_url, open_backend, shown_url
from retrieval.store.index_store import IndexStore
from retrieval.store.schema import ModelRecord
from retrieval.store.vector_index import VectorIndex
from retrieval.unit_distance import DISTANCE_DIGITS, squared_l2_from_scores
from retrieval.vector_cache import FILES as VECTOR_FILES
from retrieval.vector_cache import SearchSettings, VectorCache, VectorFileInfo

if TYPE_CHECKING:
    from retrieval.model import EmbeddingModel
    from retrieval.model_spec import ModelHeader, ModelSpec

MODELS_DIR = "models"
RERANK_CANDIDATES = 4
"""With compressed codes, this many times k candidates are re-ranked by their stored vectors."""
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
        self._vectors = VectorCache(root, self.store)

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

    def vector_index(self) -> VectorIndex:
        """The FAISS index of the database as it is now (`retrieval.vector_cache`)."""
        return self._vectors.current()[0]

    def search_settings(self) -> SearchSettings:
        """What the user asked of the vector index (`--index-type`, `--max-memory`, the target recall)."""
        with self.store.reading() as session:
            return SearchSettings.of(self.store.state(session))

    def vector_info(self) -> VectorFileInfo | None:
        """What the FAISS index is (kind, training, tuning, counts); None while the index serves no model."""
        return self._vectors.current()[1]

    def tune(self, target_recall: float) -> VectorFileInfo:
        """Tune the search to `target_recall` (recall@10), measured again."""
        return self._vectors.retune(target_recall)

    def served_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Ids and rows (float32, L2-normalised) of every vector an indexed image uses, from the database."""
        with self.store.reading() as session:
            state = self.store.state(session)
            if state.model is None:
                raise IndexNotFoundError(f"the index at {self.root} holds no images yet")
            return self.store.served_arrays(session, state)

    def search(self, queries: np.ndarray, k: int) -> list[list[Neighbour]]:
        """The `k` nearest indexed images of each query vector, nearest first.

        Copies of one file share a vector; each of them is listed.
        """
        vectors, info = self._vectors.current()
        if info is not None and parse_description(info.description).compressed:
            distances, ids = vectors.search(queries, k * RERANK_CANDIDATES)
            distances, ids = self._exact_order(queries, distances, ids)
            distances, ids = distances[:, :k], ids[:, :k]
        else:
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

    def _exact_order(self, queries: np.ndarray, distances: np.ndarray, ids: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Compressed codes give approximate distances: the candidates' stored vectors give the exact ones (the
        distance reported is always the true one), in their order."""
        wanted = sorted({int(i) for i in ids.ravel() if i >= 0})
        with self.store.reading() as session:
            rows = dict(self.store.rows_of_vectors(session, wanted))
        exact = distances.copy()
        for r, (query, row) in enumerate(zip(queries, ids)):
            for c, vector_id in enumerate(row):
                if vector_id >= 0 and int(vector_id) in rows:
                    stored = np.frombuffer(rows[int(vector_id)], dtype=np.float32)
                    exact[r, c] = squared_l2_from_scores(np.float32(query @ stored))
            order = np.argsort(exact[r], kind="stable")
            exact[r], ids[r] = exact[r][order], row[order]
        return exact, ids


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
    index = SimilarityIndex(root, backend or open_backend(root, url))
    index.store.prepare()
    remove_orphaned_temporaries(root, VECTOR_FILES)
    remove_orphaned_temporaries(root / MODELS_DIR, MODEL_FILES)
    return index
