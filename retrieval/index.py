"""An index: its database (`retrieval.store`), and its directory with the model files and the FAISS cache, in step.

Layout of the directory::

    index.db (+ -wal, -shm)      metadata, vectors and model files (SQLite, schema by Alembic), unless the
                                 database is elsewhere (`--db postgresql+psycopg://...`)
    models/<hash>.safetensors    every model the index has used: a cache of the database's model files
    vectors-<db id>-<generation>.faiss   FAISS index of the served vectors: a cache of the database
    vectors-<db id>-<generation>.json    what that FAISS index is (kind, training, tuning, counts)
    thumbnails/<sha256>-<size>.jpg       the web page's thumbnails, by content (`server.thumbnails`)
    calibration-<hash>.png               a calibration's plot, where no other path is given
    lock, migrate.lock           held by the one process writing to (or migrating) a SQLite index

The database is the source of truth, model files included: a machine with only its URL can load the served model
(checked by its hashes, and cached in `models/`). The FAISS file is named after the database it was built from (an id
made with the database) and its generation; one that is missing, unreadable, another database's or not what its
description says is never served; an older generation's is grown to the database or rebuilt from the stored
vectors (`retrieval.vectors.vector_cache`), so the two never disagree.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from retrieval.atomic import atomic_write, remove_orphaned_temporaries
from retrieval.errors import (CorruptIndexError, IndexNotFoundError, IndexUnavailableError, IndexWriteError, ModelError,
                              ModelMismatchError, OutputWriteError)
from retrieval.index_run import IndexRun, open_run
from retrieval.sources.content_hash import hash_bytes, hash_file
from retrieval.store.backends import SQLITE_NAME, Backend, database_url, open_backend, shown_url
from retrieval.store.index_store import IndexStore, copy_index_database
from retrieval.store.records import (UNSET, CopySummary, ImageChange, IndexedImage, KnownImage, ModelInfo,
                                     StoredCalibration, Unset)
from retrieval.store.vector_index import VectorIndex
from retrieval.unsaved import not_saved
from retrieval.vectors.faiss_factory import parse_description
from retrieval.vectors.unit_distance import DISTANCE_DIGITS, squared_l2_from_scores
from retrieval.vectors.vector_cache import FILES as VECTOR_FILES
from retrieval.vectors.vector_cache import SearchSettings, VectorCache, VectorFileInfo

if TYPE_CHECKING:
    from retrieval.models.model import EmbeddingModel
    from retrieval.models.model_spec import ModelHeader, ModelSpec

MODELS_DIR = "models"
THUMBNAILS_DIR = "thumbnails"
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
    """Open index: the one owner of its database, its model files, its FAISS cache and the other files of its
    directory. Use `open_index` / `create_index` to get one.

    Nothing outside `retrieval.store` and this class opens a session, sees an ORM row or takes the writer's lock
    by itself: what others need is a method here named for the job, taking and giving plain data
    (`retrieval.store.records`). `store` is this class's own (tests inspect it)."""

    def __init__(self, root: Path, backend: Backend) -> None:
        self.root = root
        self.backend = backend
        self.store = IndexStore(backend)
        self._vectors = VectorCache(root, self.store)
        self._unsaved_models: tempfile.TemporaryDirectory[str] | None = None

    @property
    def engine(self) -> Engine:
        return self.backend.engine

    @property
    def shown_database(self) -> str:
        """The database's URL as a message may show it (no password)."""
        return self.backend.shown

    def same_database(self, other: SimilarityIndex) -> bool:
        return self.backend.url == other.backend.url

    def copy_into(self, target: SimilarityIndex) -> CopySummary:
        """Copy every row into `target`'s empty database (`retrieval.store.index_store.copy_index_database`)."""
        return copy_index_database(self.store, target.store)

    def holds_images(self) -> bool:
        """Whether any file (indexed or failed) is recorded."""
        return self.store.holds_images()

    @contextmanager
    def writer(self, exclusive: bool = False) -> Iterator[None]:
        """The right to write for a whole command: exclusive (switching the served model) or, where the backend
        allows several writers at once, shared. `IndexUnavailableError` when refused."""
        with self.store.writer(exclusive):
            yield

    def update(self, exclusive: bool = False) -> AbstractContextManager[IndexRun]:
        """A run bringing the index up to date with some files (`retrieval.index_run`: its states, its writes),
        holding the writer's lock (`exclusive`: switching the served model) until it is finished or abandoned."""
        return open_run(self, exclusive)

    # --- images ------------------------------------------------------------------------------

    def indexed_count(self) -> int:
        return self.store.indexed_count()

    def indexed_sizes(self) -> set[int]:
        """The file sizes of the indexed images (a new file of another size cannot be a copy of one)."""
        return self.store.indexed_sizes()

    def indexed_images(self, roots: Sequence[str] | None = None) -> list[IndexedImage]:
        """Every indexed image, or those at or under `roots` (absolute paths)."""
        return self.store.indexed_images(roots)

    def image_by_id(self, image_id: int) -> IndexedImage | None:
        """The indexed image `image_id` (None if there is none, or it failed)."""
        return self.store.image_by_id(image_id)

    def known_images(self, roots: Sequence[str], model_id: int, everything: bool) -> dict[str, KnownImage]:
        """What the database holds of the paths at or under `roots` (every path with `everything`), by path;
        `has_target_vector` says whether a row's vector is one of `model_id`'s."""
        return self.store.known_images(roots, model_id, everything)

    def indexed_paths_of_files(self, file_ids: Iterable[str]) -> list[tuple[str, str]]:
        """(path, file id) of the indexed images of these files (device:inode)."""
        return self.store.indexed_paths_of_files(file_ids)

    def export_rows(self) -> list[dict[str, object]]:
        """Every indexed image as an export writes it, by path."""
        return self.store.export_rows()

    def write_images(self, model_id: int, changes: Sequence[ImageChange],
                     vectors: Sequence[tuple[str, bytes]] = ()) -> None:
        """New vectors of `model_id` (content hash, float32 bytes) and `changes`, in one transaction."""
        self.store.write_images(model_id, changes, vectors)

    def set_file_ids(self, file_ids: dict[int, str]) -> None:
        """New device:inode of unchanged rows, by row id (a run's plan: `IndexRun.record_plan`)."""
        self.store.set_file_ids(file_ids)

    def remove_images(self, ids: Sequence[int]) -> None:
        """Forget these rows; the files themselves are never touched."""
        self.store.remove_images(ids)

    def forget_paths(self, paths: Sequence[str]) -> tuple[int, list[str]]:
        """Forget the indexed images at or under `paths` (the files are never touched): how many were forgotten,
        and which of `paths` held none."""
        rows = self.known_images(paths, 0, everything=False)
        gone = [row.id for path, row in rows.items() if path in paths]
        with self.writer():
            self.remove_images(gone)
        return len(gone), sorted(set(paths) - set(rows))

    def finish(self, model_id: int, serving: bool) -> bool:
        """The last write of a run (`IndexRun.finish`, under the writer's lock): switch to `model_id` once every
        indexed image has its vector; drop the vectors no image uses. Whether `model_id` is served now."""
        return self.store.finish(model_id, serving)

    # --- decisions ---------------------------------------------------------------------------

    def mark_distinct(self, pairs: Iterable[tuple[str, str]]) -> int:
        """Record that each pair of contents (SHA-256s) is not a duplicate; how many were new."""
        return self.store.mark_distinct(pairs)

    def distinct_pairs(self) -> list[tuple[str, str, datetime]]:
        """Every "not duplicates" decision: (first hash, second hash, when), first < second."""
        return self.store.distinct_pairs()

    def mark_kept(self, content_hash: str) -> bool:
        """Record that this content keeps in its duplicate groups; whether the decision is new."""
        return self.store.mark_kept(content_hash)

    def chosen_keepers(self) -> list[tuple[str, datetime]]:
        """Every "keep" decision: (content hash, when)."""
        return self.store.chosen_keepers()

    # --- calibrations ------------------------------------------------------------------------

    def save_calibration(self, model: EmbeddingModel, criterion: str, threshold: float,
                         metrics: dict[str, object]) -> StoredCalibration:
        """Store a calibration of `model` (registered with the index if new)."""
        record = self.register_model(model)
        return self.store.save_calibration(record.id, model.content_hash, criterion, threshold, metrics)

    def latest_calibration(self, model_hash: str) -> StoredCalibration | None:
        return self.store.latest_calibration(model_hash)

    # --- model -----------------------------------------------------------------------------

    def served_model(self) -> ModelInfo | None:
        return self.store.served_model()

    def model_by_id(self, model_id: int) -> ModelInfo | None:
        return self.store.model_by_id(model_id)

    def model_by_hash(self, content_hash: str) -> ModelInfo | None:
        return self.store.model_row(content_hash)

    def serve_first_model(self, model_id: int) -> ModelInfo:
        """Serve `model_id` if the index serves no model yet; the model it serves afterwards."""
        return self.store.serve_first_model(model_id)

    def model_path(self, content_hash: str) -> Path:
        """The file of the model `content_hash`: its copy in `models/`, made again from the database's where it is
        missing or its bytes differ from those stored. `ModelError` where neither holds it; `CorruptIndexError`
        for stored bytes that do not hash to the SHA-256 stored with them."""
        path = self._cached_model(content_hash)
        stored = self.store.model_file_sha256(content_hash)
        if path.is_file() and (stored is None or hash_file(str(path)) == stored):
            return path
        return self._restored_model(content_hash, path)

    def holds_model(self, content_hash: str) -> bool:
        """Whether the database or the directory holds the file of the model `content_hash`."""
        return self._cached_model(content_hash).is_file() or self.store.holds_model_file(content_hash)

    def _cached_model(self, content_hash: str) -> Path:
        return self.root / MODELS_DIR / f"{content_hash}.safetensors"

    def _restored_model(self, content_hash: str, path: Path) -> Path:
        """The database's file of the model, checked by its SHA-256, written to `path` (to a temporary file for
        this process where the index directory cannot be written)."""
        stored = self.store.model_file(content_hash)
        if stored is None:
            raise ModelError(f"{path} is missing: the database {self.backend.shown} serves model "
                             f"{content_hash[:12]}, whose file neither it nor this index directory holds (copy it "
                             "from the directory that indexed with it)")
        if hash_bytes(stored.data) != stored.sha256:
            raise CorruptIndexError(f"the database {self.backend.shown} holds a file of model {content_hash[:12]} "
                                    "whose bytes do not match their SHA-256: it was edited or damaged, and is not used")
        try:
            path.parent.mkdir(exist_ok=True)
            atomic_write(path, lambda temporary: temporary.write_bytes(stored.data), "model file")
        except (OSError, OutputWriteError) as exc:
            if self._unsaved_models is None:
                self._unsaved_models = tempfile.TemporaryDirectory(prefix="simsearch-models-")
            path = Path(self._unsaved_models.name) / path.name
            path.write_bytes(stored.data)
            not_saved(self.root, "the model file is read from the database into a temporary file",
                      exc if isinstance(exc, OutputWriteError) else OutputWriteError(str(exc)))
        return path

    # --- the directory's other files ---------------------------------------------------------

    def thumbnail_path(self, content_hash: str, size: int) -> Path:
        """Where the thumbnail of this content at this size is cached."""
        return self.root / THUMBNAILS_DIR / f"{content_hash}-{size}.jpg"

    def calibration_plot_path(self, model_hash: str) -> Path:
        """Where a calibration of this model draws its plot when no other path is given."""
        return self.root / f"calibration-{model_hash[:12]}.png"

    def load_model(self) -> EmbeddingModel:
        """The model the index serves, from the index's own copy of it."""
        record = self.served_model()
        if record is None:
            raise IndexNotFoundError(f"the index at {self.root} holds no images yet")
        from retrieval.models.model import load_model

        content_hash = record.content_hash
        path = self._cached_model(content_hash)
        if path.is_file():
            try:
                model = load_model(path)
                if model.content_hash == content_hash:
                    self._keep_in_database(content_hash, path)
                    return model
                problem = ModelError(f"model file of {self.root} does not match the hash the index was built with")
            except ModelError as exc:
                problem = exc
            if not self.store.holds_model_file(content_hash):
                raise problem
        restored = self._restored_model(content_hash, path)  # a damaged copy in the cache is replaced
        try:
            model = load_model(restored)
        except ModelError as exc:
            raise CorruptIndexError(f"the database {self.backend.shown} holds a file of model {content_hash[:12]} "
                                    f"that does not load ({exc}): it is not used") from exc
        if model.content_hash != content_hash:
            raise CorruptIndexError(f"the database {self.backend.shown} holds, as the file of model "
                                    f"{content_hash[:12]}, another model ({model.content_hash[:12]}): it is not used")
        return model

    def _keep_in_database(self, content_hash: str, path: Path) -> None:
        """Store the checked file at `path` in the database where it lacks it (an index made before the database
        held model files). A database this process may not write to is left as it is: the file serves."""
        if self.store.holds_model_file(content_hash):
            return
        try:
            self.store.add_model_file(content_hash, path.read_bytes())
        except (IndexWriteError, IndexUnavailableError, OSError):
            pass

    def register_model(self, model: EmbeddingModel) -> ModelInfo:
        """The database row of `model`, adding it (and its file in the index directory) if new."""
        return self._register(model.content_hash, model.spec, model.save)

    def register_model_file(self, path: Path, header: ModelHeader) -> ModelInfo:
        """As `register_model` for the model in a file with this header, copied without loading it."""
        def copy(target: Path) -> None:
            atomic_write(target, lambda temporary: shutil.copyfile(path, temporary), "model file")

        return self._register(header.content_hash, header.spec, copy)

    def _register(self, content_hash: str, spec: ModelSpec, write: Callable[[Path], object]) -> ModelInfo:
        """The row of the model, added with its file (`write(path)` writes it atomically) when it is new. The file
        comes first, in the database and in its cache: a row never names a model the database cannot load."""
        path = self._cached_model(content_hash)
        stored = self.store.holds_model_file(content_hash)
        if not stored or not path.exists():
            path.parent.mkdir(exist_ok=True)
            write(path)
        if not stored:
            self.store.add_model_file(content_hash, path.read_bytes())
        return self.store.register_model(content_hash, spec.name, spec.to_json(), spec.embedding_dim)

    # --- vectors and search ------------------------------------------------------------------

    def vector_index(self) -> VectorIndex:
        """The FAISS index of the database as it is now (`retrieval.vectors.vector_cache`)."""
        return self._vectors.current()[0]

    def search_settings(self) -> SearchSettings:
        """What the user asked of the vector index (`--index-type`, `--max-memory`, the target recall)."""
        with self.store.snapshot() as snapshot:
            return SearchSettings.of(snapshot.state)

    def set_search_settings(self, *, index_type: str | None | Unset = UNSET,
                            max_memory: int | None | Unset = UNSET) -> None:
        """Record the vector index the user asks for (None: back to the default; unset: as it was)."""
        self.store.set_search_settings(index_type=index_type, max_memory=max_memory)

    def vector_info(self) -> VectorFileInfo | None:
        """What the FAISS index is (kind, training, tuning, counts); None while the index serves no model."""
        return self._vectors.current()[1]

    def tune(self, target_recall: float) -> VectorFileInfo:
        """Tune the search to `target_recall` (recall@10), measured again."""
        return self._vectors.retune(target_recall)

    def served_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Ids and rows (float32, L2-normalised) of every vector an indexed image uses, from the database."""
        with self.store.snapshot() as snapshot:
            if snapshot.state.model is None:
                raise IndexNotFoundError(f"the index at {self.root} holds no images yet")
            return snapshot.served_arrays()

    def served_ids(self) -> np.ndarray:
        """The ids of the served vectors, sorted (int64)."""
        with self.store.snapshot() as snapshot:
            return snapshot.served_ids()

    def stored_hashes(self, model_id: int, hashes: Iterable[str]) -> set[str]:
        """Which of these contents have a vector of `model_id` already."""
        return self.store.stored_hashes(model_id, hashes)

    def vectors_between(self, first: int, last: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids and rows (float32) of the stored vectors whose ids lie in first..last, by id, in one query."""
        return self.store.vectors_between(first, last, dim)

    def vectors_of(self, ids: Sequence[int], dim: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids and rows (float32) of these stored vectors, in the database's order."""
        with self.store.snapshot() as snapshot:
            return snapshot.vectors_of(ids, dim)

    def vector_of_path(self, path: str) -> bytes | None:
        """The served vector (float32 bytes) of the indexed image at `path`, if there is one."""
        return self.store.vector_of_path(path)

    def search(self, queries: np.ndarray, k: int, model: tuple[str, str] | None = None) -> list[list[Neighbour]]:
        """The `k` nearest indexed images of each query vector, nearest first.

        Copies of one file share a vector; each of them is listed. With `model` (the name and content hash of the
        model that made the queries), `ModelMismatchError` unless the index's vectors are that model's, checked in
        the same read of the database as the search (a server asks this for every upload).
        """
        vectors, info = self._vectors.current()
        if model is not None and info is not None and info.model_hash != model[1]:
            served = self.served_model()
            built = (served.name, served.content_hash) if served is not None else ("(unknown)", info.model_hash)
            raise ModelMismatchError.between(self.root, built, model, "search it with its own model")
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
        found, stored = self.vectors_of(sorted({int(i) for i in ids.ravel() if i >= 0}), queries.shape[1])
        rows = {int(vector_id): row for vector_id, row in zip(found, stored)}
        exact = distances.copy()
        for r, (query, row) in enumerate(zip(queries, ids)):
            for c, vector_id in enumerate(row):
                if vector_id >= 0 and int(vector_id) in rows:
                    exact[r, c] = squared_l2_from_scores(np.float32(query @ rows[int(vector_id)]))
            order = np.argsort(exact[r], kind="stable")
            exact[r], ids[r] = exact[r][order], row[order]
        return exact, ids


def is_index_directory(directory: str) -> bool:
    """Whether `directory` is a simsearch index's: its SQLite database and its folder of model files (one whose
    database is elsewhere is told apart only when it is the index's own)."""
    database, models = os.path.join(directory, SQLITE_NAME), os.path.join(directory, MODELS_DIR)
    return os.path.isfile(database) and os.path.isdir(models)


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
