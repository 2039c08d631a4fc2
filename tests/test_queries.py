"""`images_under`: the images at or below some paths, by a plain prefix (no wildcards, no partial names)."""

from __future__ import annotations

from pathlib import Path

from retrieval.index import create_index
from retrieval.store.index_store import ImageChange
from retrieval.store.schema import STATUS_ERROR

PATHS = ["/a/b", "/a/b/x.png", "/a/b/deep/y.png", "/a/bc/z.png", "/a/b_c/u.png", "/a/bxc/v.png", "/a/b%/w.png",
         "/a/b%d/t.png"]


def under(tmp_path: Path, *roots: str) -> list[str]:
    index = create_index(tmp_path / "idx")
    index.store.write_images(0, [ImageChange(path, STATUS_ERROR, error="unreadable") for path in PATHS])
    return sorted(index.store.known_images(roots, 0, everything=False))


def test_a_root_takes_itself_and_what_lies_below_it_not_a_longer_name(tmp_path: Path) -> None:
    assert under(tmp_path, "/a/b") == ["/a/b", "/a/b/deep/y.png", "/a/b/x.png"]
    assert under(tmp_path, "/a/b/") == ["/a/b/deep/y.png", "/a/b/x.png"]


def test_underscore_and_percent_are_no_wildcards(tmp_path: Path) -> None:
    assert under(tmp_path, "/a/b_c") == ["/a/b_c/u.png"]
    assert under(tmp_path, "/a/b%") == ["/a/b%/w.png"]


def test_several_roots_add_up(tmp_path: Path) -> None:
    assert under(tmp_path, "/a/bc", "/a/b%d") == ["/a/b%d/t.png", "/a/bc/z.png"]


def test_six_hundred_roots_are_looked_up_in_batches_sqlite_accepts(tmp_path: Path) -> None:
    roots = [f"/many/{i:04d}.png" for i in range(600)]
    index = create_index(tmp_path / "idx")
    index.store.write_images(0, [ImageChange(path, STATUS_ERROR, error="unreadable") for path in roots])
    assert sorted(index.store.known_images(roots, 0, everything=False)) == roots


def test_a_root_under_another_adds_nothing_twice() -> None:
    from retrieval.store.queries import ROOTS_PER_QUERY, root_batches

    nested = ["/a/b/x.png", "/a b", "/a", "/a/b", "/a/b/"] + [f"/z/{i:04d}" for i in range(ROOTS_PER_QUERY)]
    batches = list(root_batches(nested))
    assert [root for batch in batches for root in batch][:2] == ["/a", "/a b"]
    assert sum(map(len, batches)) == 2 + ROOTS_PER_QUERY and all(len(b) <= ROOTS_PER_QUERY for b in batches)
