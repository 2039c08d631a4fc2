"""Labelled folders for train, eval and calibrate: a class is a folder, however deep the tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import photo
from retrieval.errors import InputPathError
from retrieval.sources.images import Preprocessing
from retrieval.sources.labelled import load_labelled_images

PREP = Preprocessing(size=(16, 16))


def test_equal_leaf_folders_in_different_branches_are_different_classes(tmp_path: Path) -> None:
    """Omniglot's layout: every alphabet has a `character01`; they are different characters."""
    for seed, folder in enumerate(["Latin/character01", "Greek/character01", "Greek/character02"]):
        (tmp_path / folder).mkdir(parents=True)
        photo(seed, (20, 20)).save(tmp_path / folder / "a.png")
        photo(seed + 10, (20, 20)).save(tmp_path / folder / "b.png")
    photo(99, (20, 20)).save(tmp_path / "loose.png")
    images = load_labelled_images(tmp_path, PREP, workers=0)
    assert images.classes == ["Greek/character01", "Greek/character02", "Latin/character01"]
    assert sorted(images.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    assert not any(path.endswith("loose.png") for path in images.paths), "a file outside any class is left out"


def test_files_without_class_folders_are_not_a_labelled_set(tmp_path: Path) -> None:
    for seed in range(3):
        photo(seed, (20, 20)).save(tmp_path / f"{seed}.png")
    with pytest.raises(InputPathError, match="two class subfolders"):
        load_labelled_images(tmp_path, PREP, workers=0)
    assert len(load_labelled_images(tmp_path, PREP, workers=0, self_supervised=True).paths) == 3
