"""Adding image files to an index, as `simsearch index`, `simsearch dedup PATHS`, `simsearch undo` and the server's
POST /api/images do: the paths checked, the index found or made (`retrieval.new_index`: a new one is removed again when the run fails before recording a file), the
pipeline run over them (`indexer.pipeline`)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.pipeline import IndexOptions, index_paths
from retrieval.errors import InputPathError
from retrieval.locate import index_dir_for_writing
from retrieval.new_index import index_to_fill
from retrieval.report import IndexSummary, Reporter, SilentReporter
from retrieval.sources.file_identity import something_at

if TYPE_CHECKING:
    from retrieval.index import SimilarityIndex
    from retrieval.models.model import EmbeddingModel


def check_paths(paths: Sequence[Path]) -> None:
    """`InputPathError` naming the first of `paths` where nothing is (a dangling symbolic link is something)."""
    missing = [path for path in paths if not something_at(path)]
    if missing:
        raise InputPathError(f"no such file or directory: {missing[0]}")


def add_paths(paths: Sequence[Path], index_dir: Path | None = None, db: str | None = None,
              model: EmbeddingModel | None = None, options: IndexOptions | None = None,
              progress: AbstractContextManager[Reporter] | None = None) -> tuple[Path, IndexSummary]:
    """Bring the index at `index_dir` (as `retrieval.locate` finds it, else `.simsearch/` here, made if need be;
    its database `db`) up to date with the image files under `paths`, with `model` (default: the index's, else the
    default model); its directory and what happened to each file. `progress` is entered only while the pipeline
    runs, so a path or database refused before leaves it untouched."""
    check_paths(paths)
    with index_to_fill(index_dir_for_writing(index_dir), db) as index:
        with progress or nullcontext(SilentReporter()) as reporter:
            return index.root, add_to_index(index, paths, model, options, reporter)


def add_to_index(index: SimilarityIndex, paths: Sequence[Path], model: EmbeddingModel | None = None,
                 options: IndexOptions | None = None, reporter: Reporter | None = None) -> IndexSummary:
    """Bring an open index (the server's, the one an undo restores files to) up to date with the image files under
    `paths` (`indexer.pipeline.index_paths`: `model` default the index's, a run the index owns)."""
    return index_paths(index, paths, model, options, reporter)
