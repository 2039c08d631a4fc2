"""One run that brings an index up to date with some files (`simsearch index`, adding on the server, an undo's
restored files), as the index owns it: `SimilarityIndex.update` opens it under the writer's lock and hands it out;
the caller (`indexer.pipeline`) scans, decides and embeds, and writes only through it.

The states a run goes through::

    OPENED --record_plan--> PLANNED --apply / remove--> APPLYING --finish--> FINISHED
      \\______________________________________________________________________/
                 anything raised, or the run left unfinished: ABANDONED

Each write is one transaction that leaves the index consistent: an abandoned run keeps what it committed, the
previous index stays usable, and the next run picks up what is left. The lock is released when the run is
finished or abandoned, never before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from typing import TYPE_CHECKING

from retrieval.errors import IndexWriteError
from retrieval.store.records import ImageChange

if TYPE_CHECKING:
    from retrieval.index import SimilarityIndex


class RunState(Enum):
    OPENED = "opened"
    """The lock held; the model chosen and the search settings recorded here, nothing about files written yet."""
    PLANNED = "planned"
    """What happens to each file decided, the files' new identities recorded."""
    APPLYING = "applying"
    """Changes committed in batches."""
    FINISHED = "finished"
    """The model switched where every image has its vector, unused vectors dropped, the FAISS file up to date."""
    ABANDONED = "abandoned"
    """Stopped before finishing: what was committed stays."""


class IndexRun:
    """The writes of one run, for one model, in the order its states allow; `IndexWriteError` for a write its
    state does not allow (a caller's mistake, never a user's)."""

    def __init__(self, index: SimilarityIndex) -> None:
        self._index = index
        self.state = RunState.OPENED
        self._model_id: int | None = None
        self._serving = True

    def record_search_settings(self, index_type: str | None, max_memory: int | None) -> None:
        """The vector index asked for from now on (`SimilarityIndex.set_search_settings`), recorded before the plan so
        that a refusal found while checking it leaves the index as it was."""
        self._require(RunState.OPENED)
        self._index.set_search_settings(index_type=index_type, max_memory=max_memory)

    def record_plan(self, model_id: int, serving: bool, new_file_ids: dict[int, str]) -> None:
        """The run writes vectors of `model_id` (`serving`: the model the index serves, else one being
        re-embedded with); `new_file_ids`: the device:inode of unchanged rows, by row id."""
        self._require(RunState.OPENED)
        self._model_id, self._serving = model_id, serving
        self._index.set_file_ids(new_file_ids)
        self.state = RunState.PLANNED

    def apply(self, changes: Sequence[ImageChange], vectors: Sequence[tuple[str, bytes]] = ()) -> None:
        """Commit one batch: new vectors (content hash, float32 bytes) and the image changes that use them."""
        self._index.write_images(self._applying(), changes, vectors)

    def remove(self, ids: Sequence[int]) -> None:
        """Forget these rows (files gone); the files themselves are never touched."""
        self._applying()
        self._index.remove_images(ids)

    def finish(self) -> None:
        """Switch to the run's model once every indexed image has its vector, drop the vectors no image uses, and
        bring the FAISS file up to the database (rather than leave it to the first query)."""
        model_id = self._applying()
        self._index.finish(model_id, self._serving)
        self._index.vector_index()
        self.state = RunState.FINISHED

    def _applying(self) -> int:
        self._require(RunState.PLANNED, RunState.APPLYING)
        self.state = RunState.APPLYING
        assert self._model_id is not None
        return self._model_id

    def _require(self, *states: RunState) -> None:
        if self.state not in states:
            raise IndexWriteError(f"an index run that is {self.state.value} cannot do this "
                                  f"(it must be {' or '.join(state.value for state in states)})")


@contextmanager
def open_run(index: SimilarityIndex, exclusive: bool) -> Iterator[IndexRun]:
    """A run of `index` under its writer's lock (`exclusive`: switching the served model), abandoned unless
    finished."""
    with index.writer(exclusive):
        run = IndexRun(index)
        try:
            yield run
        finally:
            if run.state is not RunState.FINISHED:
                run.state = RunState.ABANDONED
