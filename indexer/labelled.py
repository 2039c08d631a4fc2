"""Embed a labelled folder (a class = a subfolder) without an index: for evaluation and calibration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.loading import default_workers, make_loader
from indexer.plan import Work
from indexer.report import Reporter, SilentReporter
from indexer.scan import scan
from retrieval.embedding import Embedder
from retrieval.errors import InputPathError


@dataclass(frozen=True)
class LabelledEmbeddings:
    embeddings: np.ndarray
    labels: np.ndarray
    """Integer class of each row; `classes[labels[i]]` is its folder name."""
    classes: list[str]
    paths: list[str]


def embed_labelled_folder(embedder: Embedder, root: Path, *, batch_size: int = 32, workers: int | None = None,
                          reporter: Reporter | None = None) -> LabelledEmbeddings:
    """Embed every image under `root`, labelled by its parent folder; unreadable files are warned about and
    left out. Raises `InputPathError` when fewer than two classes remain."""
    reporter = reporter or SilentReporter()
    scanned = scan([root])
    _require_classes(root, {f.label for f in scanned.files})
    for problem in scanned.problems:
        reporter.warn(problem.path, problem.reason)
    loader = make_loader([Work(f, None) for f in scanned.files], embedder.model.preprocessing,
                         batch_size=batch_size, workers=default_workers() if workers is None else workers,
                         max_pixels=100_000_000, pin_memory=embedder.pin_memory)
    reporter.start("embedding", len(scanned.files))
    vectors, names, paths = [], [], []
    for batch in loader:
        for item in batch.items:
            if item.error is not None:
                reporter.warn(item.work.file.path, item.error)
            else:
                names.append(item.work.file.label)
                paths.append(item.work.file.path)
        if len(batch.pixels):
            vectors.append(embedder.embed(batch.pixels))
        reporter.advance(len(batch.items))
    classes = sorted(set(names))
    _require_classes(root, set(classes))
    index_of = {name: i for i, name in enumerate(classes)}
    return LabelledEmbeddings(np.concatenate(vectors), np.array([index_of[n] for n in names]), classes, paths)


def _require_classes(root: Path, classes: set[str]) -> None:
    if len(classes) < 2:
        raise InputPathError(f"{root} needs at least two class subfolders with images (found {len(classes)})")
