"""Read a labelled folder (a class = a subfolder) without an index: for training, evaluation and calibration."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from retrieval.errors import InputPathError
from retrieval.evaluation.labelled import LabelledReport, evaluate_labelled
from retrieval.models.embedding import Embedder
from retrieval.report import Reporter, SilentReporter
from retrieval.sources.classes import class_of
from retrieval.sources.decode import Source, SourceResult
from retrieval.sources.embed import embed_batches
from retrieval.sources.images import DEFAULT_MAX_PIXELS, Preprocessing
from retrieval.sources.scan import scan
from retrieval.sources.workers import decoding_loader, default_workers


@dataclass(frozen=True)
class LabelledEmbeddings:
    embeddings: np.ndarray
    labels: np.ndarray
    """Integer class of each row; `classes[labels[i]]` is its class subfolder."""
    classes: list[str]
    paths: list[str]


@dataclass(frozen=True)
class LabelledImages:
    pixels: torch.Tensor
    """uint8 (N, H, W, C) at the model's input size."""
    labels: torch.Tensor
    """int64 (N,); `classes[labels[i]]` is the class subfolder (or, for unlabelled data, the file)."""
    classes: list[str]
    paths: list[str]


def _labelled_sources(root: Path, reporter: Reporter, need_classes: bool) -> tuple[list[Source], list[str]]:
    """The image files under `root` and the class of each (`retrieval.sources.classes`, "" outside any class subfolder).
    Scan problems are warned about; when classes are needed, so are files outside any class subfolder, which are
    left out."""
    scanned = scan([root])
    for problem in scanned.problems:
        reporter.warn(problem.path, problem.reason)
    files = scanned.files
    if need_classes:
        for f in files:
            if not f.label:
                reporter.warn(f.path, "not in a class subfolder; left out")
        files = [f for f in files if f.label]
        _require_classes(root, {f.label or "" for f in files})
    elif not files:
        raise InputPathError(f"no images under {root}")
    reporter.start("decoding", len(files))
    return [Source(i, path=f.path) for i, f in enumerate(files)], [f.label or "" for f in files]


def _decoded(results: list[SourceResult], sources: list[Source], reporter: Reporter) -> list[int]:
    """The keys of the decoded inputs, in order; the others are warned about."""
    for result in results:
        if result.error is not None:
            reporter.warn(sources[result.key].path or "", result.error)
    reporter.advance(len(results))
    return [result.key for result in results if result.error is None]


def embed_labelled_folder(embedder: Embedder, root: Path, *, batch_size: int = 32, workers: int | None = None,
                          reporter: Reporter | None = None) -> LabelledEmbeddings:
    """Embed every image under `root`, labelled by its class subfolder (`retrieval.sources.classes`). Raises
    `InputPathError` when fewer than two classes remain."""
    reporter = reporter or SilentReporter()
    sources, names = _labelled_sources(root, reporter, need_classes=True)
    vectors, keys = [], []
    for results in embed_batches(embedder, sources, batch_size=batch_size, workers=workers):
        vectors += [result.vector for result in results if result.vector is not None]
        keys += _decoded(results, sources, reporter)
    classes, labels = _class_labels(root, [names[key] for key in keys])
    embeddings = np.stack(vectors) if vectors else np.empty((0, embedder.model.embedding_dim), np.float32)
    return LabelledEmbeddings(embeddings, labels.numpy(), classes, [sources[key].path or "" for key in keys])


def evaluate_labelled_folder(embedder: Embedder, root: Path, *, way: int, shot: int, episodes: int, pairs: int,
                             seed: int, workers: int | None = None,
                             progress: AbstractContextManager[Reporter] | None = None
                             ) -> tuple[LabelledEmbeddings, LabelledReport]:
    """What `simsearch eval` reports on a labelled folder: its images embedded (`progress` entered only meanwhile)
    and scored (`retrieval.evaluation.labelled.evaluate_labelled`)."""
    with progress or nullcontext(SilentReporter()) as reporter:
        found = embed_labelled_folder(embedder, root, workers=workers, reporter=reporter)
    return found, evaluate_labelled(found.embeddings, found.labels, way=way, shot=shot, episodes=episodes,
                                    pairs=pairs, seed=seed)


def load_labelled_images(root: Path, prep: Preprocessing, *, self_supervised: bool = False, workers: int | None = None,
                         reporter: Reporter | None = None) -> LabelledImages:
    """Decode every image under `root` into memory for training. Labels come from the class subfolders
    (`retrieval.sources.classes`), or with `self_supervised` every image is its own class (any folder layout)."""
    reporter = reporter or SilentReporter()
    workers = default_workers() if workers is None else workers
    sources, names = _labelled_sources(root, reporter, need_classes=not self_supervised)
    loader = decoding_loader(sources, prep, batch_size=64, workers=workers, max_pixels=DEFAULT_MAX_PIXELS,
                             pin_memory=False)
    chunks, keys = [], []
    for batch in loader:
        chunks.append(batch.pixels)
        keys += _decoded(batch.results, sources, reporter)
    paths = [sources[key].path or "" for key in keys]
    if self_supervised:
        if len(paths) < 2:
            raise InputPathError(f"{root} needs at least two readable images (found {len(paths)})")
        return LabelledImages(torch.cat(chunks), torch.arange(len(paths)), list(paths), paths)
    classes, labels = _class_labels(root, [names[key] for key in keys])
    return LabelledImages(torch.cat(chunks), labels, classes, paths)


def _class_labels(root: Path, names: list[str]) -> tuple[list[str], torch.Tensor]:
    classes = sorted(set(names))
    _require_classes(root, set(classes))
    index_of = {name: i for i, name in enumerate(classes)}
    return classes, torch.tensor([index_of[n] for n in names], dtype=torch.long)


def _require_classes(root: Path, classes: set[str]) -> None:
    if len(classes) < 2:
        raise InputPathError(f"{root} needs at least two class subfolders with images (found {len(classes)})")


def support_from_folder(root: Path) -> dict[str, list[Path]]:
    """The image files of each class under `root` (a few-shot support set; a class as `retrieval.sources.classes` says,
    so a nested tree gives one class per leaf folder). Raises `InputPathError` for a missing folder or fewer than
    two classes."""
    if not root.is_dir():
        raise InputPathError(f"not a folder: {root}")
    support: dict[str, list[Path]] = {}
    for file in scan([root]).files:
        if file.label is not None:
            support.setdefault(file.label, []).append(Path(file.path))
    for folder in _leaf_folders(root):
        name = class_of(root, folder / "image")  # the class a file in that folder would have
        if name not in support:
            raise InputPathError(f"support class {name!r} has no images ({folder})")
    _require_classes(root, set(support))
    return dict(sorted(support.items()))


def _leaf_folders(root: Path) -> list[Path]:
    """The folders under `root` with no folder in them (hidden ones aside): each must be a class with images."""
    leaves = []
    for folder, subfolders, _ in os.walk(root):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        if not subfolders and Path(folder) != root:
            leaves.append(Path(folder))
    return leaves
