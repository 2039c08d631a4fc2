"""A FAISS factory description is parsed in one place: what each caller asks of it (kind, lists, PQ codes)."""

from __future__ import annotations

import pytest

from retrieval.vectors.faiss_factory import index_bytes, new_faiss_index, parse_description, training_size


@pytest.mark.parametrize(("text", "kind", "lists", "pq"), [
    ("Flat", "Flat", None, None),
    ("IVF1024,Flat", "IVF", 1024, None),
    ("IVF4096,PQ32", "IVF", 4096, (32, 8)),
    ("IVF256,PQ16x4fs", "IVF", 256, (16, 4)),
    ("HNSW32", "HNSW", None, None),
    ("IVF256_HNSW32,Flat", "IVF", 256, None),
    ("PQ16", "Flat", None, (16, 8)),
])
def test_a_description_is_read_as_faiss_builds_it(text: str, kind: str, lists: int | None,
                                                   pq: tuple[int, int] | None) -> None:
    parsed = parse_description(text)
    assert (parsed.kind, parsed.lists, parsed.pq_m and (parsed.pq_m, parsed.pq_bits)) == (kind, lists, pq)
    assert parsed.compressed == (pq is not None), "product-quantised codes are re-ranked on the exact vectors"


def test_only_an_inverted_file_first_keeps_the_callers_ids() -> None:
    assert parse_description("IVF64,Flat").keeps_ids
    assert not parse_description("HNSW32").keeps_ids
    assert not parse_description("OPQ8,IVF64,PQ8").keeps_ids, "a transform first: FAISS's ids go through IDMap2"
    index = new_faiss_index(32, "OPQ8,IVF64,PQ8", ids=True)
    assert "IDMap2" in type(index).__name__


def test_memory_and_training_follow_the_parsed_parts() -> None:
    dim, count = 128, 1_000_000
    assert index_bytes("Flat", count, dim) == count * (dim * 4 + 8)
    assert index_bytes("IVF4096,PQ64", count, dim) == count * (64 + 8) + 4096 * dim * 4
    assert index_bytes("IVF4096,PQ64x4", count, dim) == count * (32 + 8) + 4096 * dim * 4
    assert training_size(count, "Flat") == 0
    assert training_size(count, "IVF4096,Flat") == 39 * 4096
