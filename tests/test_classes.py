"""One rule for "a class", everywhere: the folder holding the images, named by its path under the folder given."""

from __future__ import annotations

from pathlib import Path

from retrieval.sources.classes import class_of
from retrieval.sources.labelled import support_from_folder
from retrieval.sources.scan import scan


def omniglot_like(root: Path, make_photos) -> Path:  # type: ignore[no-untyped-def]
    """Greek/character01, Greek/character02 and Latin/character01: equal leaf names in two alphabets."""
    for number, folder in enumerate(["Greek/character01", "Greek/character02", "Latin/character01"]):
        make_photos(root / folder, 2, start=10 * number)
    make_photos(root, 1, start=99)  # directly in the folder given: no class
    return root


def test_a_class_is_the_folder_path_under_the_root() -> None:
    assert class_of("/data", "/data/Greek/character01/a.png") == "Greek/character01"
    assert class_of("/data", "/data/cat/a.png") == "cat"
    assert class_of("/data", "/data/a.png") is None


def test_a_nested_support_folder_keeps_each_leaf_a_class(tmp_path: Path, make_photos) -> None:  # type: ignore[no-untyped-def]
    """`classify --support` on an Omniglot-like tree once merged the characters of an alphabet into one class."""
    support = support_from_folder(omniglot_like(tmp_path / "support", make_photos))
    assert sorted(support) == ["Greek/character01", "Greek/character02", "Latin/character01"]
    assert all(len(files) == 2 for files in support.values())


def test_the_index_records_the_same_class(tmp_path: Path, make_photos) -> None:  # type: ignore[no-untyped-def]
    root = omniglot_like(tmp_path / "data", make_photos)
    labels = {Path(f.path).relative_to(root).as_posix(): f.label for f in scan([root]).files}
    assert labels["Greek/character02/img0010.png"] == "Greek/character02"
    assert labels["img0099.png"] is None
    [alone] = scan([root / "Latin" / "character01" / "img0020.png"]).files
    assert alone.label is None, "a file given by itself is in no folder given"
