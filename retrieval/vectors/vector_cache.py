"""The FAISS cache of an index's database: its kind chosen by size, grown as the collection grows, tuned by
measured recall, and described beside it.

Files in the index directory, both named after the database (its id) and the generation they hold::

    vectors-<db id>-<generation>.faiss   the FAISS index
    vectors-<db id>-<generation>.json    what it is: kind, settings, training sample, tuning, counts

A query whose generation has its file loads it memory-mapped. After a change, the newest earlier file of the same
kind is grown to the database (new vectors added by id, removed ones taken out) rather than rebuilt; it is
rebuilt from the stored vectors (trained on a random sample, then tuned) when the collection's size calls for
another kind, the settings changed, or the count moved by more than `RETUNE_AFTER` since it was last tuned (where
the measured recall may have drifted). Files are written aside and renamed, so a crash mid-build leaves the
previous file serving; nothing is ever decoded again. Where the files cannot be written (a read-only index
directory, a full disk), the index is built and kept in memory, and the user told so once (`retrieval.unsaved`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from retrieval.atomic import atomic_write
from retrieval.errors import IndexUnavailableError, InvalidArgumentError, OutputWriteError
from retrieval.store.records import ServedState
from retrieval.store.vector_index import VectorIndex
from retrieval.unsaved import not_saved
from retrieval.vectors.faiss_factory import choose_description, training_size
from retrieval.vectors.vector_tuning import DEFAULT_TARGET_RECALL, Tuning, tune

RETUNE_AFTER = 0.5
"""Rebuild and tune again once the vector count has grown or shrunk by this fraction since the last tuning."""
FILES = re.compile(r"vectors-([0-9a-f]+)-(\d+)\.(faiss|json)")


class ServedSnapshot(Protocol):
    """One read of the database: its served state and the vectors that state serves."""

    state: ServedState

    def served_ids(self) -> np.ndarray: ...

    def vectors_of(self, ids: Sequence[int], dim: int) -> tuple[np.ndarray, np.ndarray]: ...

    def served_arrays(self) -> tuple[np.ndarray, np.ndarray]: ...


class Database(Protocol):
    """What the cache reads of an index's database, and the one setting it writes."""

    def snapshot(self) -> AbstractContextManager[ServedSnapshot]: ...

    def set_search_settings(self, *, target_recall: float | None) -> None: ...


@dataclass(frozen=True)
class SearchSettings:
    """What the user asked of the vector index (None: the default)."""

    index_type: str | None = None
    max_memory: int | None = None
    target_recall: float | None = None

    @classmethod
    def of(cls, state: ServedState) -> SearchSettings:
        return cls(state.index_type, state.max_memory, state.target_recall)

    @property
    def recall(self) -> float:
        return self.target_recall if self.target_recall is not None else DEFAULT_TARGET_RECALL


@dataclass(frozen=True)
class VectorFileInfo:
    """The description of one FAISS file."""

    database_id: str
    generation: int
    model_hash: str
    dim: int
    count: int
    description: str
    chosen_by: str
    """"size" (the guidelines' choice for `count`), "given" (`--index-type`), or why the given one gave way."""
    settings: SearchSettings
    trained_on: int
    tuning: Tuning
    tuned_count: int
    """The count when it was last built and tuned."""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def read(cls, path: Path) -> VectorFileInfo | None:
        try:
            data = json.loads(path.read_text())
            return cls(**{**data, "settings": SearchSettings(**data["settings"]), "tuning": Tuning(**data["tuning"])})
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def write(self, path: Path) -> None:
        atomic_write(path, lambda temporary: temporary.write_text(json.dumps(self.to_dict(), sort_keys=True)),
                     "vector file description")


class VectorCache:
    """The FAISS index of one database, kept in the index directory `root`."""

    def __init__(self, root: Path, database: Database) -> None:
        self.root = root
        self._database = database
        self._held: tuple[str, VectorIndex, VectorFileInfo] | None = None

    def _path(self, database_id: str, generation: int, suffix: str) -> Path:
        return self.root / f"vectors-{database_id}-{generation}.{suffix}"

    def current(self) -> tuple[VectorIndex, VectorFileInfo | None]:
        """The FAISS index of the database as it is now, and its description (None while no model is served)."""
        with self._database.snapshot() as snapshot:
            state = snapshot.state
            if state.model is None:
                return VectorIndex.build(1, np.empty(0, np.int64), np.empty((0, 1), np.float32)), None
            name = self._path(state.database_id, state.generation, "faiss").name
            if self._held is not None and self._held[0] == name:
                return self._held[1], self._held[2]
            found = self._matching(state) or self._grown(snapshot) or self._built(snapshot)
            if found[1].tuning.target_recall != SearchSettings.of(state).recall:
                found = self._tuned(snapshot, *found)
        self._held = (name, *found)
        return found

    def _matching(self, state: ServedState) -> tuple[VectorIndex, VectorFileInfo] | None:
        """This generation's file, if it describes this database as it is and can be read."""
        info = VectorFileInfo.read(self._path(state.database_id, state.generation, "json"))
        if info is None or not self._fits(info, state):
            return None
        try:
            vectors = VectorIndex.load(self._path(state.database_id, state.generation, "faiss"), info.tuning.nprobe)
        except IndexUnavailableError:
            return None
        if len(vectors) != info.count or vectors.dim != info.dim:
            return None
        return vectors, info

    @staticmethod
    def _fits(info: VectorFileInfo, state: ServedState) -> bool:
        """Whether the file was made for this database, model and kind of index (the target recall changes only
        how it is searched)."""
        assert state.model is not None
        return (info.database_id == state.database_id and info.model_hash == state.model.content_hash
                and info.dim == state.model.embedding_dim and info.settings.index_type == state.index_type
                and info.settings.max_memory == state.max_memory)

    def _description(self, state: ServedState, count: int) -> tuple[str, str]:
        assert state.model is not None
        settings = SearchSettings.of(state)
        if settings.index_type:
            return settings.index_type, "given"
        return choose_description(count, state.model.embedding_dim, settings.max_memory), "size"

    def _grown(self, snapshot: ServedSnapshot) -> tuple[VectorIndex, VectorFileInfo] | None:
        """The newest earlier file of this database, brought up to it by adding and removing vectors, when it is
        still the right kind and its tuning still holds."""
        state = snapshot.state
        earlier = sorted((int(match.group(2)), path) for path in self.root.glob(f"vectors-{state.database_id}-*.json")
                         if (match := FILES.fullmatch(path.name)) and int(match.group(2)) < state.generation)
        if not earlier:
            return None
        generation, path = earlier[-1]
        info = VectorFileInfo.read(path)
        if info is None or not self._fits(info, state):
            return None
        ids = snapshot.served_ids()
        description, _ = self._description(state, len(ids))
        if description != info.description or abs(len(ids) - info.tuned_count) > RETUNE_AFTER * info.tuned_count:
            return None
        try:
            vectors = VectorIndex.load(self._path(state.database_id, generation, "faiss"), info.tuning.nprobe,
                                       mapped=False)
        except IndexUnavailableError:
            return None
        if len(vectors) != info.count:
            return None
        held = vectors.ids()
        added = np.setdiff1d(ids, held, assume_unique=True)
        vectors.remove(np.setdiff1d(held, ids, assume_unique=True))
        if len(added):
            vectors.add(*snapshot.vectors_of(added.tolist(), info.dim))
        grown = replace(info, generation=state.generation, count=len(vectors))
        self._save(vectors, grown)
        return vectors, grown

    def _built(self, snapshot: ServedSnapshot) -> tuple[VectorIndex, VectorFileInfo]:
        """A new index of the kind the collection calls for, trained on a random sample and tuned."""
        state = snapshot.state
        assert state.model is not None
        ids, data = snapshot.served_arrays()
        dim = state.model.embedding_dim
        description, chosen_by = self._description(state, len(ids))
        seed = _seed(state)
        try:
            vectors = VectorIndex.build(dim, ids, data, description, seed=seed)
        except InvalidArgumentError:
            if chosen_by != "given":
                raise
            # the kind asked for cannot be trained on what the index holds now (removals shrank it): search goes
            # on with the kind its size calls for, and says so
            description = choose_description(len(ids), dim, state.max_memory)
            chosen_by = f"size, as {state.index_type} cannot be trained on {len(ids):,} vectors"
            vectors = VectorIndex.build(dim, ids, data, description, seed=seed)
        settings = SearchSettings.of(state)
        tuning = tune(vectors, ids, data, settings.recall, seed=seed)
        info = VectorFileInfo(state.database_id, state.generation, state.model.content_hash, dim, len(ids),
                              description, chosen_by, settings, training_size(len(ids), description), tuning, len(ids))
        self._save(vectors, info)
        return vectors, info

    def retune(self, target_recall: float) -> VectorFileInfo:
        """Keep from now on the fastest search that reaches `target_recall`, measured again on the index as it is."""
        self._database.set_search_settings(target_recall=target_recall)
        self._held = None
        info = self.current()[1]
        if info is None:
            raise IndexUnavailableError("the index holds no images yet: nothing to tune")
        return info

    def _tuned(self, snapshot: ServedSnapshot, vectors: VectorIndex,
               info: VectorFileInfo) -> tuple[VectorIndex, VectorFileInfo]:
        """The same index tuned to the target recall now asked for (its file is unchanged: only how it is
        searched)."""
        state = snapshot.state
        ids, data = snapshot.served_arrays()
        settings = SearchSettings.of(state)
        tuning = tune(vectors, ids, data, settings.recall, seed=_seed(state))
        tuned = replace(info, settings=settings, tuning=tuning, tuned_count=len(ids))
        try:
            tuned.write(self._path(state.database_id, state.generation, "json"))
        except OutputWriteError as exc:
            self._not_saved(exc)
        return vectors, tuned

    def _save(self, vectors: VectorIndex, info: VectorFileInfo) -> None:
        """Write the FAISS file, then its description, and drop this database's other generations. It is a cache:
        a read-only index directory or a full disk just leave it unwritten (this process keeps it in memory, and
        says so), and the next reader builds it again."""
        try:
            vectors.save(self._path(info.database_id, info.generation, "faiss"))
            info.write(self._path(info.database_id, info.generation, "json"))
        except OutputWriteError as exc:
            self._not_saved(exc)
            return
        for path in self.root.glob(f"vectors-{info.database_id}-*"):
            match = FILES.fullmatch(path.name)
            if match and int(match.group(2)) != info.generation:
                try:
                    path.unlink(missing_ok=True)
                except OSError:
                    pass  # an older generation is never served: it only takes room until a later cleanup

    def _not_saved(self, error: OutputWriteError) -> None:
        not_saved(self.root, "the vector cache is kept in memory", error)


def _seed(state: ServedState) -> int:
    """The seed of an index's training sample and tuning queries: its database's, so a rebuild draws the same."""
    return int(state.database_id[:8], 16)

