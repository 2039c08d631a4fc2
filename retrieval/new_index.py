"""An index a command may create: removed again when the command fails before recording any file in it, so that
a failed first `index` or `calibrate` leaves no empty index behind."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from retrieval.errors import SimsearchError
from retrieval.index import SimilarityIndex, create_index


@contextmanager
def index_to_fill(root: Path, db: str | None = None) -> Iterator[SimilarityIndex]:
    """The index at `root`, its database `db` (`create_index`: made if need be). Where this made its directory
    and the block fails with a `SimsearchError` before any file (indexed or failed) is recorded, the directory is
    removed again; in doubt (the database cannot even say), it is kept."""
    is_new = not root.exists()
    index = create_index(root, db)
    try:
        yield index
    except SimsearchError:
        if is_new:
            _remove_if_empty(index)
        raise


def _remove_if_empty(index: SimilarityIndex) -> None:
    try:
        holds_images = index.holds_images()
    except SimsearchError:
        return
    if not holds_images:
        shutil.rmtree(index.root, ignore_errors=True)
