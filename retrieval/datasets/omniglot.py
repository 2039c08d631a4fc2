"""Omniglot (Lake et al. 2015) read straight from the official zip files.

Images are decoded once per (zip, size, filter) and kept in memory as uint8 tensors:
mode ``"L"`` pixels (0 = ink, 255 = paper), resized with PIL when ``size`` is not 105.

Public rather than beside one user: `simsearch eval` reads Lake's runs (`read_lake_runs`), and the character sets
(`load_characters`, `CharacterSet.select_alphabets`) serve two benchmarks (`omniglot_oneshot`,
`calibration_transfer`) and the tests, which must split the alphabets the same way.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from retrieval.datasets.locate import DATASETS_ENV, datasets_root
from retrieval.errors import SimsearchError

NATIVE_SIZE = 105
LAKE_RUNS = 20

Split = Literal["background", "evaluation"]


class DatasetNotFoundError(SimsearchError, FileNotFoundError):
    """The shared datasets folder, or a file expected in it, is missing."""


class DatasetFormatError(SimsearchError, ValueError):
    """A dataset file does not have the layout this reader expects."""


def omniglot_file(name: str, root: Path | None = None) -> Path:
    """Path of ``omniglot/<name>`` under the datasets root; raises if it is absent."""
    path = (root or datasets_root()) / "omniglot" / name
    if not path.is_file():
        raise DatasetNotFoundError(f"{path} not found (set {DATASETS_ENV} to the shared datasets folder)")
    return path


@dataclass(frozen=True)
class CharacterSet:
    """Omniglot drawings with one class per character.

    ``images`` is (N, S, S) uint8, ``labels`` (N,) int64 in ``0..C-1``,
    ``alphabet_of_class`` (C,) int64 indexing ``alphabets``; ``characters`` names each
    class as ``"<alphabet>/<characterNN>"``.
    """

    images: Tensor
    labels: Tensor
    alphabet_of_class: Tensor
    alphabets: tuple[str, ...]
    characters: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.characters)

    def select_alphabets(self, names: list[str] | tuple[str, ...]) -> CharacterSet:
        """The subset drawn from the named alphabets, with classes renumbered from 0."""
        unknown = set(names) - set(self.alphabets)
        if unknown:
            raise KeyError(f"unknown alphabets: {sorted(unknown)}")
        wanted = torch.tensor([self.alphabets.index(name) for name in names])
        class_keep = torch.isin(self.alphabet_of_class, wanted)
        new_label = torch.full((self.num_classes,), -1, dtype=torch.long)
        new_label[class_keep] = torch.arange(int(class_keep.sum()))
        image_keep = class_keep[self.labels]
        old_alphabets = self.alphabet_of_class[class_keep]
        alphabet_map = {int(old): new for new, old in enumerate(wanted.tolist())}
        return CharacterSet(
            images=self.images[image_keep],
            labels=new_label[self.labels[image_keep]],
            alphabet_of_class=torch.tensor([alphabet_map[int(a)] for a in old_alphabets], dtype=torch.long),
            alphabets=tuple(names),
            characters=tuple(c for c, k in zip(self.characters, class_keep.tolist(), strict=True) if k),
        )


@dataclass(frozen=True)
class LakeRun:
    """One of Lake's 20-way one-shot runs: query ``i`` belongs with ``support[answers[i]]``."""

    support: Tensor
    queries: Tensor
    answers: Tensor


def decode_png(data: bytes, size: int, resample: str) -> np.ndarray:
    """PNG bytes to an (S, S) uint8 array in PIL mode ``"L"``."""
    with Image.open(io.BytesIO(data)) as image:
        grey = image.convert("L")
        if grey.size != (size, size):
            grey = grey.resize((size, size), Image.Resampling[resample])
        return np.asarray(grey, dtype=np.uint8)


@lru_cache(maxsize=8)
def _load_characters(path: Path, size: int, resample: str) -> CharacterSet:
    with zipfile.ZipFile(path) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".png"))
        if not names:
            raise DatasetFormatError(f"{path} holds no PNG files")
        pixels = np.stack([decode_png(archive.read(n), size, resample) for n in names])
    keys = []
    for name in names:
        parts = name.split("/")
        if len(parts) != 4:
            raise DatasetFormatError(f"unexpected member {name!r} in {path}")
        keys.append((parts[1], parts[2]))
    characters = sorted(set(keys))
    alphabets = sorted({alphabet for alphabet, _ in characters})
    class_index = {key: i for i, key in enumerate(characters)}
    return CharacterSet(
        images=torch.from_numpy(pixels),
        labels=torch.tensor([class_index[key] for key in keys], dtype=torch.long),
        alphabet_of_class=torch.tensor([alphabets.index(a) for a, _ in characters], dtype=torch.long),
        alphabets=tuple(alphabets),
        characters=tuple(f"{a}/{c}" for a, c in characters),
    )


def load_characters(split: Split, size: int, resample: str = "BILINEAR", root: Path | None = None) -> CharacterSet:
    """The ``images_background`` or ``images_evaluation`` set at ``size x size``."""
    if split not in ("background", "evaluation"):
        raise ValueError(f"unknown split {split!r}")
    return _load_characters(omniglot_file(f"images_{split}.zip", root), size, resample)


def is_lake_runs_zip(path: Path) -> bool:
    """Whether `path` is a zip in the layout of Lake's `all_runs.zip` (run01/class_labels.txt ...)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return "run01/class_labels.txt" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def read_lake_runs(path: Path, decode: Callable[[bytes], np.ndarray]) -> tuple[LakeRun, ...]:
    """The 20 runs of a Lake `all_runs.zip`, each image decoded by `decode` (PNG bytes -> uint8 array)."""
    runs = []
    with zipfile.ZipFile(path) as archive:
        for run in range(1, LAKE_RUNS + 1):
            prefix = f"run{run:02d}"
            try:
                listing = archive.read(f"{prefix}/class_labels.txt").decode()
            except KeyError as exc:
                raise DatasetFormatError(f"{path} has no {prefix}/class_labels.txt") from exc
            pairs = [line.split() for line in listing.splitlines() if line.strip()]
            support_names = sorted({p[1] for p in pairs if len(p) == 2})
            if any(len(p) != 2 for p in pairs) or len(support_names) != len(pairs):
                raise DatasetFormatError(f"{prefix}/class_labels.txt is not a one-to-one query/support list")
            runs.append(
                LakeRun(
                    support=torch.from_numpy(np.stack([decode(archive.read(n)) for n in support_names])),
                    queries=torch.from_numpy(np.stack([decode(archive.read(q)) for q, _ in pairs])),
                    answers=torch.tensor([support_names.index(s) for _, s in pairs], dtype=torch.long),
                )
            )
    return tuple(runs)


@lru_cache(maxsize=4)
def _load_lake_runs(path: Path, size: int, resample: str) -> tuple[LakeRun, ...]:
    return read_lake_runs(path, lambda data: decode_png(data, size, resample))


def load_lake_runs(size: int, resample: str = "BILINEAR", root: Path | None = None) -> tuple[LakeRun, ...]:
    """Lake's 20 runs of 20-way within-alphabet one-shot trials (400 trials) from ``all_runs.zip``."""
    return _load_lake_runs(omniglot_file("all_runs.zip", root), size, resample)
