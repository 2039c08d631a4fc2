"""Query conditions shared by the pipeline and the library."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import ColumnElement, func, or_

from retrieval.store.schema import ImageRecord


def images_under(roots: Iterable[str]) -> ColumnElement[bool]:
    """Images at one of `roots` (absolute paths) or below it; a plain prefix test, so `_` and `%` in names
    are not wildcards and `/a/b` does not take in `/a/bc`."""
    conditions = []
    for root in roots:
        prefix = root.rstrip("/") + "/"
        conditions += [ImageRecord.path == root, func.substr(ImageRecord.path, 1, len(prefix)) == prefix]
    return or_(*conditions)
