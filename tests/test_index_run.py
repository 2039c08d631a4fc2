"""An index run as the index owns it (`SimilarityIndex.update`): its states, its lock, and what an abandoned run
leaves."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run
from retrieval.errors import IndexWriteError
from retrieval.index import create_index, open_index
from retrieval.index_run import RunState
from retrieval.models.model import EmbeddingModel


def test_a_pipeline_run_finishes_and_releases_the_lock(tmp_path: Path, tiny: EmbeddingModel,  # type: ignore[no-untyped-def]
                                                       make_photos) -> None:
    make_photos(tmp_path / "photos", 3)
    index = create_index(tmp_path / "idx")
    assert run(index, [tmp_path / "photos"], tiny).added == 3
    with index.update(exclusive=True) as again:  # the lock is free again, even for a re-embed's exclusive one
        assert again.state is RunState.OPENED


def test_writes_go_in_the_order_of_the_states(tmp_path: Path) -> None:
    index = create_index(tmp_path / "idx")
    with index.update() as opened:
        with pytest.raises(IndexWriteError, match="opened"):
            opened.apply([])  # nothing is applied before the plan is recorded
        with pytest.raises(IndexWriteError, match="opened"):
            opened.finish()


def test_an_interrupted_run_is_abandoned_and_leaves_the_index_usable(tmp_path: Path, tiny: EmbeddingModel,  # type: ignore[no-untyped-def]
                                                                      make_photos) -> None:
    make_photos(tmp_path / "photos", 4)
    index = create_index(tmp_path / "idx")
    run(index, [tmp_path / "photos"], tiny)
    served = index.served_model()
    assert served is not None
    with pytest.raises(KeyboardInterrupt):
        with index.update() as interrupted:
            interrupted.record_plan(served.id, True, {})
            interrupted.remove([image.id for image in index.indexed_images()][:1])
            raise KeyboardInterrupt
    assert interrupted.state is RunState.ABANDONED
    with pytest.raises(IndexWriteError, match="abandoned"):
        interrupted.apply([])
    reopened = open_index(tmp_path / "idx")
    assert reopened.indexed_count() == 3, "what the run committed before it stopped stays"
    assert len(reopened.search(reopened.served_vectors()[1][:1], 1)[0]) == 1, "and the index still answers"
    with reopened.update() as next_run:
        assert next_run.state is RunState.OPENED
