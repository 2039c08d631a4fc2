"""Every FAISS index simsearch makes, made here from a FAISS factory description.

Indexes compare L2-normalised vectors by inner product; `retrieval.unit_distance` turns their scores into the
distances reported. Which kind of index is a description string ("Flat", or an approximate one such as
"HNSW32,Flat"), so changing the kind changes a description, not the code around it.
"""

from __future__ import annotations

import faiss

EXACT = "Flat"
"""Every stored vector compared with every query: exact neighbours, and range search (which dedup needs)."""


def new_faiss_index(dim: int, description: str, ids: bool = False) -> faiss.Index:
    """An empty inner-product index of `dim`-d vectors, of the kind `description` names; with `ids`, wrapped in an
    IDMap2, so that vectors are added with (and searches return) the caller's int64 ids instead of positions."""
    return faiss.index_factory(dim, f"IDMap2,{description}" if ids else description, faiss.METRIC_INNER_PRODUCT)
