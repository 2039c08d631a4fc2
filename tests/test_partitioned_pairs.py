"""The partitioned pair search (`retrieval.vectors.partitioned_pairs`): the pairs exact search finds, in bounded memory,
refused before any work beyond its budget; and dedup through it groups a small index as the exact path does."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from retrieval.decisions import dedup
from retrieval.decisions.dedup import index_duplicates, pairs_within
from retrieval.errors import InvalidArgumentError
from retrieval.index import open_index
from retrieval.vectors.partitioned_pairs import (TRAINING_PER_CELL, ArrayVectors, Partition, cell_count,
                                                 partitioned_pairs)
from tests.conftest import decision_photos, invoke

THRESHOLD = 0.5


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def clustered(count: int, dim: int, seed: int = 0) -> np.ndarray:
    """Vectors around 40 centres, two of a centre about 0.9 apart (beyond `THRESHOLD`), the last 5 % near copies
    of the first; and 50 pairs straddling the border of two centres' cells (at their midpoint, 0.1 apart)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((40, dim)))
    vectors = unit(centres[rng.integers(0, 40, count)] + 0.8 / np.sqrt(dim) * rng.standard_normal((count, dim)))
    planted = count // 20
    vectors[-planted:] = unit(vectors[:planted] + rng.uniform(0.1, 0.6, (planted, 1)) / np.sqrt(dim)
                              * rng.standard_normal((planted, dim)))
    for pair in range(50):
        a, b = centres[pair % 40], centres[(pair + 1) % 40]
        middle = unit(((a + b) / 2 + 0.2 / np.sqrt(dim) * rng.standard_normal(dim))[None])[0]
        step = 0.05 * unit((a - b)[None])[0]
        vectors[2 * pair + planted:2 * pair + planted + 2] = unit(np.stack([middle + step, middle - step]))
    return vectors


def pair_set(first: np.ndarray, second: np.ndarray) -> set[tuple[int, int]]:
    return set(zip(first.tolist(), second.tolist()))


def test_finds_the_pairs_exact_search_finds_also_across_cell_borders() -> None:
    vectors = clustered(4000, 64)
    exact_first, exact_second, exact_distance = pairs_within(vectors, THRESHOLD)
    found = partitioned_pairs(ArrayVectors(vectors), THRESHOLD)
    assert pair_set(found.first, found.second) == pair_set(exact_first, exact_second)
    distance = dict(zip(zip(exact_first.tolist(), exact_second.tolist()), exact_distance.tolist()))
    assert np.allclose(found.distance, [distance[pair] for pair in zip(found.first.tolist(), found.second.tolist())],
                       atol=1e-5), "distances are the float32 ones, not float16's"
    cells = cell_count(len(vectors))
    training = np.sort(np.random.default_rng(0).permutation(len(vectors))[:cells * TRAINING_PER_CELL])
    home = Partition.trained(ArrayVectors(vectors).rows, training, cells, 0).cells_of(vectors, 0.0)[0]  # the seed's
    across = home[found.first] != home[found.second]
    assert across.sum() >= 25, "the border pairs lie in two cells, and are found"
    assert found.recall == 1.0 and found.sampled > 0


GENERATED = """
import resource, sys
import numpy as np
from retrieval.vectors.partitioned_pairs import CHUNK_ROWS, partitioned_pairs

class Generated:
    \"\"\"200,000 x 1,024 clustered vectors made a chunk at a time from its seed, never held whole: the last 5 % of
    each chunk near copies of its first.\"\"\"
    count, dim = 200_000, 1024

    def chunk(self, number):
        rng = np.random.default_rng(number)
        centres = np.random.default_rng(-1 % 2**32).standard_normal((40, self.dim), dtype=np.float32)
        rows = centres[rng.integers(0, 40, CHUNK_ROWS)]
        rows += 0.8 * rng.standard_normal(rows.shape, dtype=np.float32)
        planted = CHUNK_ROWS // 20
        rows[-planted:] = rows[:planted] + 0.3 * rng.standard_normal((planted, self.dim), dtype=np.float32)
        rows = rows[:min(CHUNK_ROWS, self.count - number * CHUNK_ROWS)]
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def chunks(self):
        for number in range(-(-self.count // CHUNK_ROWS)):
            yield self.chunk(number)

    def rows(self, rows):
        out = np.empty((len(rows), self.dim), np.float32)
        for number in np.unique(rows // CHUNK_ROWS):
            mine = rows // CHUNK_ROWS == number
            out[mine] = self.chunk(number)[rows[mine] % CHUNK_ROWS]
        return out

Generated().rows(np.arange(0, 200_000, 7))  # the source's own room, before the search's
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
found = partitioned_pairs(Generated(), 0.5, recall_sample=20)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
print(len(found.first), grown)
"""


def test_memory_stays_below_the_vectors_float32_room_and_holds_no_pair_matrix() -> None:
    """200,000 x 1,024 vectors (781 MiB in float32) never held whole in float32: the peak resident memory grows
    by their bfloat16 copy (391 MiB), their cells, the workers' blocks and the compiled kernels (150 to 250 MiB
    beside the copy, measured), not by a float32 copy and more, nor by anything N x N (160 GB)."""
    done = subprocess.run([sys.executable, "-c", GENERATED], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    pairs, grown = (int(value) for value in done.stdout.split())
    float32 = 200_000 * 1024 * 4
    assert pairs > 9_000, "most of the 9,828 planted pairs"
    assert grown < float32, f"grew {grown / 2**20:.0f} MiB beside {float32 / 2**20:.0f} MiB in float32"


class Untouchable:
    """A source that must not be read."""

    count, dim = 1_000_000, 1280

    def chunks(self) -> Iterator[np.ndarray]:
        raise AssertionError("read before the budget was checked")

    def rows(self, rows: np.ndarray) -> np.ndarray:
        raise AssertionError("read before the budget was checked")


def test_refuses_before_any_work_beyond_its_memory_and_beyond_max_pairs() -> None:
    with pytest.raises(InvalidArgumentError, match="GiB"):
        partitioned_pairs(Untouchable(), THRESHOLD, memory_limit=2 ** 30)
    with pytest.raises(InvalidArgumentError, match="more than 10 pairs"):
        partitioned_pairs(ArrayVectors(clustered(2000, 32)), THRESHOLD, max_pairs=10)


def test_dedup_of_a_small_index_is_the_same_through_the_partitioned_search(
        tmp_path: Path, tiny_model_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decision_photos(tmp_path / "photos")
    result = invoke("index", "photos", "--model", str(tiny_model_file), "--workers", "0", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    index = open_index(tmp_path / ".simsearch")
    exact = index_duplicates(index, 0.05)
    monkeypatch.setattr(dedup, "PARTITION_ABOVE", 0)
    partitioned = index_duplicates(index, 0.05)
    assert partitioned.pairs.method == "partitioned" and exact.pairs.method == "exact"
    assert [group.to_dict() for group in partitioned.groups] == [group.to_dict() for group in exact.groups]
    assert len(exact.groups) == 1 and len(exact.groups[0].others) == 2
    told = invoke("dedup", "--threshold", "0.05", "--json", cwd=tmp_path)
    assert told.exit_code == 0, told.output
    assert "pairs searched in 1 cell," in told.stderr and "pair recall" in told.stderr
