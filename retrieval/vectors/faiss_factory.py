"""Every FAISS index simsearch makes, made here from a FAISS factory description, and which description suits a
collection of a given size.

Indexes compare L2-normalised vectors by inner product; `retrieval.vectors.unit_distance` turns their scores into the
distances reported. Which kind of index is a description string ("Flat", "IVF1024,Flat", "IVF4096,PQ32"), so
changing the kind changes a description, not the code around it.

The choice by size follows FAISS's "Guidelines to choose an index": exact `Flat` while a query over every vector
costs little (up to `FLAT_UP_TO` vectors); then an inverted file of K = 4 sqrt(N) lists (a power of two, so that
it changes, and the index is retrained, only when the collection has about quadrupled); and product-quantised
codes instead of the vectors where those no longer fit the memory allowed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import faiss

from retrieval.errors import InvalidArgumentError

EXACT = "Flat"
"""Every stored vector compared with every query: exact neighbours, and range search (which dedup needs)."""
FLAT_UP_TO = 100_000
"""Up to this many vectors a flat search costs a few milliseconds a query (7 ms at 100k x 128 on 2 cores)."""
MIN_LISTS, MAX_LISTS = 256, 65_536
TRAINING_PER_LIST = 39
"""FAISS warns below 39 training vectors a k-means centroid."""
TRAINING_MIN, TRAINING_MAX = 30_000, 256_000
ID_BYTES = 8
PQ_BITS = 8
"""Bits of each product-quantiser code when a description does not say (FAISS's default)."""
_COMPONENT = re.compile(r"IVF(?P<lists>\d+)(?:_\w+)?|HNSW(?P<links>\d+)(?:_\w+)?|Flat"
                        r"|PQ(?P<pq>\d+)(?:x(?P<bits>\d+))?(?:fs|np)?|(?P<other>.*)")
"""One component of a description: a coarse quantiser (IVF, HNSW), flat codes, product-quantised codes, or
anything else FAISS takes (a transform such as OPQ16 or PCA64, scalar quantisers...), which is only recorded."""


@dataclass(frozen=True)
class Description:
    """A FAISS factory description as its parts: what every caller asks instead of reading the string.

    `kind` is how a query finds candidates: every code compared (`Flat`, whatever the codes), an inverted file
    (`IVF`, `lists` of them) or a graph (`HNSW`, `links` a node). `pq_m` and `pq_bits` are product-quantised codes
    (`pq_m` sub-vectors of `pq_bits` bits); None where the codes are the vectors themselves or another kind.
    `transformed` says that a transform (OPQ, PCA...) comes first, before the index proper."""

    text: str
    kind: Literal["Flat", "IVF", "HNSW"] = "Flat"
    lists: int | None = None
    links: int | None = None
    pq_m: int | None = None
    pq_bits: int | None = None
    transformed: bool = False

    @property
    def compressed(self) -> bool:
        """Whether the index keeps approximate codes instead of the vectors (its distances are estimates)."""
        return self.pq_m is not None

    @property
    def keeps_ids(self) -> bool:
        """Whether the index itself keeps the caller's ids (an inverted file, first in the description)."""
        return self.kind == "IVF" and not self.transformed

    def code_bytes(self, dim: int) -> int:
        """Bytes the index holds for each vector, id aside: its PQ code, else the float32 vector."""
        if self.pq_m is None or self.pq_bits is None:
            return dim * 4
        return math.ceil(self.pq_m * self.pq_bits / 8)


@lru_cache(maxsize=64)
def parse_description(text: str) -> Description:
    """The parts of a FAISS factory description ("Flat", "IVF1024,Flat", "IVF4096,PQ32", "HNSW32"); parts FAISS
    knows and this does not are kept in the text only (whether FAISS takes the whole is `check_description`'s)."""
    kind: Literal["Flat", "IVF", "HNSW"] = "Flat"
    lists = links = pq_m = pq_bits = None
    transformed = False
    components = text.split(",")
    for position, component in enumerate(components):
        match = _COMPONENT.fullmatch(component.strip())
        assert match is not None  # the last alternative takes anything
        if match["lists"] is not None:
            kind, lists = "IVF", int(match["lists"])
        elif match["links"] is not None and kind == "Flat":
            kind, links = "HNSW", int(match["links"])
        elif match["pq"] is not None:
            pq_m, pq_bits = int(match["pq"]), int(match["bits"] or PQ_BITS)
        elif match["other"] is not None and position == 0 and len(components) > 1:
            transformed = True
    return Description(text, kind, lists, links, pq_m, pq_bits, transformed)


def new_faiss_index(dim: int, description: str, ids: bool = False) -> faiss.Index:
    """An empty inner-product index of `dim`-d vectors, of the kind `description` names; with `ids`, one that is
    added to (and searched for) with the caller's int64 ids instead of positions: an inverted file keeps ids
    itself, any other kind is wrapped in an IDMap2."""
    native_ids = ids and parse_description(description).keeps_ids
    return faiss.index_factory(dim, f"IDMap2,{description}" if ids and not native_ids else description,
                               faiss.METRIC_INNER_PRODUCT)


def check_description(dim: int, description: str, count: int | None = None) -> str:
    """`description` if FAISS can build an index of it for `dim`-d vectors (and train it on `count`, when given);
    `InvalidArgumentError` otherwise."""
    lists = parse_description(description).lists
    if count is not None and lists is not None and lists > count:
        raise InvalidArgumentError(f"an index of type {description!r} needs at least {lists:,} "
                                   f"vectors to train its lists; this index will hold {count:,}")
    try:
        new_faiss_index(dim, description, ids=True)
    except RuntimeError as exc:
        raise InvalidArgumentError(f"FAISS cannot build an index of type {description!r} for {dim}-d vectors: "
                                   f"{faiss_reason(exc)}") from exc
    return description


def faiss_reason(exc: RuntimeError) -> str:
    """FAISS's message without the C++ function and source line it prefixes (an error message read, not a
    description)."""
    text = " ".join(str(exc).split())
    match = re.search(r" at \S+:\d+: (.*)$", text)
    return (match.group(1) if match else text) or "rejected"


def list_count(count: int) -> int:
    """Inverted lists for `count` vectors: 4 sqrt(N) as a power of two, within what the training sample allows."""
    wanted = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(count))))
    return max(1, min(MAX_LISTS, max(MIN_LISTS, wanted), count // TRAINING_PER_LIST))


def index_bytes(description: str, count: int, dim: int) -> int:
    """What an index of this kind holds in memory for `count` vectors: codes, ids and centroids (an estimate)."""
    parsed = parse_description(description)
    centroids = (parsed.lists or 0) * dim * 4
    return count * (parsed.code_bytes(dim) + ID_BYTES) + centroids


def choose_description(count: int, dim: int, max_memory: int | None = None) -> str:
    """The index kind for `count` vectors of `dim` dimensions within `max_memory` bytes (no limit: None).
    `InvalidArgumentError` when even the smallest codes would not fit."""
    if count <= FLAT_UP_TO:
        description = EXACT
    else:
        description = f"IVF{list_count(count)},Flat"
    if max_memory is None or index_bytes(description, count, dim) <= max_memory:
        return description
    lists = list_count(max(count, 1))
    for sub in (m for m in (dim // 2, dim // 4, dim // 8, dim // 16, dim // 32) if m >= 4 and dim % m == 0):
        compressed = f"IVF{lists},PQ{sub}"
        if index_bytes(compressed, count, dim) <= max_memory:
            return compressed
    smallest = min((m for m in (dim // 32, dim // 16, dim // 8) if m >= 4 and dim % m == 0), default=4)
    need = index_bytes(f"IVF{lists},PQ{smallest}", count, dim)
    raise InvalidArgumentError(f"--max-memory {max_memory:,} bytes is below what {count:,} vectors of {dim} "
                               f"dimensions need even compressed ({need:,} bytes as IVF{lists},PQ{smallest})")


def training_size(count: int, description: str) -> int:
    """How many vectors to train an index of this kind on: a random sample of 30k to 256k, at least 39 a list."""
    lists = parse_description(description).lists
    if lists is None:
        return 0
    return min(count, max(TRAINING_MIN, TRAINING_PER_LIST * lists), TRAINING_MAX)


def set_search_breadth(index: faiss.Index, nprobe: int | None) -> None:
    """Search `nprobe` inverted lists (a flat index has none to set)."""
    if nprobe is None:
        return
    try:
        faiss.extract_index_ivf(index).nprobe = nprobe
    except RuntimeError:
        return
