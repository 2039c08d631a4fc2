"""Query conditions shared by the pipeline and the library."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sqlalchemy import ColumnElement, func, or_

from retrieval.store.schema import ImageRecord

ROOTS_PER_QUERY = 200
"""Roots in one `images_under` condition: each adds two terms to a chain of ORs, and SQLite refuses an expression
tree deeper than 1,000 ("Expression tree is too large"), which about 500 roots reach."""


def images_under(roots: Iterable[str]) -> ColumnElement[bool]:
    """Images at one of `roots` (absolute paths) or below it; a plain prefix test, so `_` and `%` in names
    are not wildcards and `/a/b` does not take in `/a/bc`."""
    conditions = []
    for root in roots:
        prefix = root.rstrip("/") + "/"
        conditions += [ImageRecord.path == root, func.substr(ImageRecord.path, 1, len(prefix)) == prefix]
    return or_(*conditions)


def root_batches(roots: Iterable[str]) -> Iterator[list[str]]:
    """`roots` without those at or under another one, in batches of at most `ROOTS_PER_QUERY`: one
    `images_under` query a batch, and no image is under roots of two batches."""
    outermost: list[str] = []
    for root in sorted(set(roots), key=lambda path: path.rstrip("/").split("/")):  # a folder, then all under it
        if not outermost or not (root == outermost[-1] or root.startswith(outermost[-1].rstrip("/") + "/")):
            outermost.append(root)
    for start in range(0, len(outermost), ROOTS_PER_QUERY):
        yield outermost[start:start + ROOTS_PER_QUERY]
