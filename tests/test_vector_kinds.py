"""The vector index grows with the collection: its kind by size, tuned by measured recall, grown without a rebuild."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, invoke
from retrieval.errors import InvalidArgumentError
from retrieval.index import SimilarityIndex, create_index, open_index
from retrieval.store.index_store import ImageChange
from retrieval.store.schema import STATUS_OK
from retrieval.store.vector_index import VectorIndex
from retrieval.vectors.faiss_factory import FLAT_UP_TO, check_description, choose_description, list_count

DIM = 16


def clustered(count: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around 50 centres, as embeddings of a photo collection fall."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, DIM))
    rows = centres[rng.integers(0, 50, count)] + 0.3 * rng.standard_normal((count, DIM))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def fill(index: SimilarityIndex, vectors: np.ndarray, start: int = 0) -> int:
    store = index.store
    record = store.register_model("0" * 64, "m", "{}", DIM)
    model = store.serve_first_model(record.id).id
    for first in range(0, len(vectors), 1000):
        part = range(first, min(first + 1000, len(vectors)))
        store.write_images(model, [ImageChange(f"/p/{start + i}.png", STATUS_OK, size=1, mtime_ns=1,
                                               content_hash=f"{start + i:064x}", vector_hash=f"{start + i:064x}")
                                   for i in part],
                           [(f"{start + i:064x}", vectors[i].tobytes()) for i in part])
    return model


def test_the_kind_follows_the_size_and_the_memory_allowed() -> None:
    assert choose_description(FLAT_UP_TO, 128) == "Flat"
    assert choose_description(1_000_000, 128) == "IVF4096,Flat"
    assert choose_description(200_000, 128) == f"IVF{list_count(200_000)},Flat"
    assert list_count(200_000) in (1024, 2048) and 4 * 200_000 ** 0.5 / 2 <= list_count(200_000) <= 16 * 200_000 ** 0.5
    assert choose_description(1_000_000, 128, max_memory=200_000_000) == "IVF4096,PQ64"
    assert choose_description(1_000_000, 128, max_memory=30_000_000).startswith("IVF4096,PQ")
    with pytest.raises(InvalidArgumentError, match="below what 1,000,000 vectors"):
        choose_description(1_000_000, 128, max_memory=1_000_000)
    with pytest.raises(InvalidArgumentError, match="could not parse"):
        check_description(128, "Bogus42")
    with pytest.raises(InvalidArgumentError, match="needs at least 4,096 vectors"):
        check_description(128, "IVF4096,Flat", count=100)


def test_an_inverted_file_is_trained_on_a_random_sample_and_tuned_to_the_target(tmp_path: Path) -> None:
    vectors = clustered(6000)
    index = create_index(tmp_path / "idx")
    fill(index, vectors)
    index.store.set_search_settings(index_type="IVF64,Flat", target_recall=0.9)
    info = index.vector_info()
    assert info is not None and info.description == "IVF64,Flat" and info.chosen_by == "given"
    assert info.trained_on == 6000 and info.tuning.queries == 1000
    assert info.tuning.recall_at_10 >= 0.9 and info.tuning.nprobe is not None and info.tuning.nprobe < 64
    narrower = index.tune(0.99)
    assert narrower.tuning.recall_at_10 >= 0.99 and narrower.tuning.nprobe >= info.tuning.nprobe  # type: ignore[operator]
    reopened = open_index(tmp_path / "idx")
    assert reopened.vector_info().tuning == narrower.tuning, "the tuning is kept with the index"  # type: ignore[union-attr]
    [[first, *_]] = reopened.search(vectors[17][None], 3)
    assert first.path == "/p/17.png" and abs(first.distance) < 1e-5


def test_new_vectors_grow_the_index_without_training_it_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index = create_index(tmp_path / "idx")
    model = fill(index, clustered(6000))
    index.store.set_search_settings(index_type="IVF64,Flat")
    before = index.vector_info()
    built = []
    real_build = VectorIndex.build
    monkeypatch.setattr(VectorIndex, "build", classmethod(lambda cls, *a, **k: built.append(1) or real_build(*a, **k)))
    added = clustered(100, seed=1)
    fill(index, added, start=6000)
    rows = index.store.known_images(["/p"], model, False)
    index.store.remove_images([rows["/p/5.png"].id])
    reopened = open_index(tmp_path / "idx")
    info = reopened.vector_info()
    assert built == [], "grown by adding and removing ids, not trained again"
    assert info is not None and info.count == 6099 and info.tuning == before.tuning  # type: ignore[union-attr]
    assert info.generation > before.generation  # type: ignore[union-attr]
    assert [p.name for p in sorted((tmp_path / "idx").glob("vectors-*"))] == \
        [f"vectors-{info.database_id}-{info.generation}.faiss", f"vectors-{info.database_id}-{info.generation}.json"]
    [[first, *_]] = reopened.search(added[7][None], 1)
    assert first.path == "/p/6007.png"
    assert all(n.path != "/p/5.png" for n in reopened.search(clustered(6000)[5][None], 5)[0])


def test_growing_past_the_tuned_size_rebuilds_and_tunes_again(tmp_path: Path) -> None:
    index = create_index(tmp_path / "idx")
    fill(index, clustered(3000))
    index.store.set_search_settings(index_type="IVF32,Flat")
    assert index.vector_info().tuned_count == 3000  # type: ignore[union-attr]
    fill(index, clustered(2000, seed=2), start=3000)
    info = open_index(tmp_path / "idx").vector_info()
    assert info is not None and info.count == 5000 and info.tuned_count == 5000


def test_a_crash_while_building_leaves_the_previous_index_serving(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    index = create_index(tmp_path / "idx")
    vectors = clustered(2000)
    fill(index, vectors)
    first = index.vector_info()
    index.store.set_search_settings(index_type="IVF16,Flat")

    def crash(self: VectorIndex, path: Path) -> None:
        raise KeyboardInterrupt  # the process killed while writing the new file

    monkeypatch.setattr(VectorIndex, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        open_index(tmp_path / "idx").vector_index()
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "idx").glob("vectors-*")) == sorted(
        [f"vectors-{first.database_id}-{first.generation}.faiss",  # type: ignore[union-attr]
         f"vectors-{first.database_id}-{first.generation}.json"])  # type: ignore[union-attr]
    [[hit, *_]] = open_index(tmp_path / "idx").search(vectors[3][None], 1)
    assert hit.path == "/p/3.png"


def test_compressed_codes_report_the_true_distance(tmp_path: Path) -> None:
    index = create_index(tmp_path / "idx")
    vectors = clustered(3000)
    fill(index, vectors)
    index.store.set_search_settings(index_type="IVF16,PQ4")
    query = clustered(1, seed=9)[0]
    hits = index.search(query[None], 5)[0]
    for hit in hits:
        stored = vectors[int(hit.path.split("/")[-1].split(".")[0])]
        assert hit.distance == pytest.approx(float(np.sum((query - stored) ** 2)), abs=1e-4)
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)


def test_a_file_description_that_lies_is_not_believed(tmp_path: Path) -> None:
    index = create_index(tmp_path / "idx")
    fill(index, clustered(500))
    info = index.vector_info()
    described = tmp_path / "idx" / f"vectors-{info.database_id}-{info.generation}.json"  # type: ignore[union-attr]
    data = json.loads(described.read_text())
    described.write_text(json.dumps({**data, "count": 7}))
    assert len(open_index(tmp_path / "idx").vector_index()) == 500
    described.write_text("{not json")
    assert len(open_index(tmp_path / "idx").vector_index()) == 500


def test_index_type_and_max_memory_from_the_cli(tmp_path: Path, tiny_model_file: Path, make_photos) -> None:  # type: ignore[no-untyped-def]
    make_photos(tmp_path / "p", 12)
    base = ["index", "p", "--model", str(tiny_model_file), "--workers", "0"]
    assert invoke(*base, cwd=tmp_path).exit_code == 0
    assert_one_line_error(invoke(*base, "--index-type", "Bogus42", cwd=tmp_path), "could not parse index string")
    assert_one_line_error(invoke(*base, "--index-type", "IVF64,Flat", cwd=tmp_path), "needs at least 64 vectors")
    assert_one_line_error(invoke(*base, "--max-memory", "100", cwd=tmp_path), "below what 12 vectors")
    assert_one_line_error(invoke(*base, "--max-memory", "lots", cwd=tmp_path), "must be a size")
    shown = invoke("info", "--json", cwd=tmp_path)
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.stdout)
    assert report["settings"]["index_type"] is None and report["vectors"]["description"] == "Flat", \
        "refused settings leave the index as it was"
    assert invoke(*base, "--index-type", "IVF2,Flat", cwd=tmp_path).exit_code == 0
    report = json.loads(invoke("info", "--json", cwd=tmp_path).stdout)
    assert report["vectors"]["description"] == "IVF2,Flat" and report["images"] == 12
    tuned = invoke("tune", "--target-recall", "1.0", "--json", cwd=tmp_path)
    assert tuned.exit_code == 0 and json.loads(tuned.stdout)["tuning"]["recall_at_10"] == 1.0
    assert invoke(*base, "--index-type", "auto", cwd=tmp_path).exit_code == 0
    assert json.loads(invoke("info", "--json", cwd=tmp_path).stdout)["vectors"]["description"] == "Flat"
    assert "Flat" in invoke("info", cwd=tmp_path).output


def test_the_knn_graph_finds_the_pairs_exact_search_finds(tmp_path: Path) -> None:
    from retrieval.decisions.dedup import pairs_within
    from retrieval.vectors.neighbour_graph import graph_pairs, pair_recall

    base = clustered(4000)
    rng = np.random.default_rng(3)
    copies = base[:300] + 0.01 * rng.standard_normal((300, DIM)).astype(np.float32)
    vectors = np.concatenate([base, copies / np.linalg.norm(copies, axis=1, keepdims=True)])
    ids = np.arange(len(vectors), dtype=np.int64) * 2 + 5
    threshold = 0.01
    exact_first, exact_second, _ = pairs_within(vectors, threshold)
    searcher = VectorIndex.build(DIM, ids, vectors, "IVF32,Flat")
    searcher.set_nprobe(8)
    first, second, distance = graph_pairs(searcher, ids, vectors, threshold)
    assert len(exact_first) >= 300 and (first < second).all() and (distance <= threshold).all()
    found = set(zip(first.tolist(), second.tolist()))
    exact = set(zip(exact_first.tolist(), exact_second.tolist()))
    assert found <= exact and len(found & exact) / len(exact) >= 0.95
    recall, sampled = pair_recall(vectors, first, second, threshold, sample=len(vectors))
    assert sampled == len(vectors) and recall == pytest.approx(len(found & exact) / len(exact))


def test_dedup_on_an_approximate_index_goes_through_the_graph_and_says_so(tmp_path: Path, tiny_model_file: Path,  # type: ignore[no-untyped-def]
                                                                         make_photos) -> None:
    import shutil

    photos = make_photos(tmp_path / "p", 12)
    shutil.copy(photos[0], tmp_path / "p" / "copy.png")
    base = ["index", "p", "--model", str(tiny_model_file), "--workers", "0"]
    assert invoke(*base, "--index-type", "IVF2,Flat", cwd=tmp_path).exit_code == 0
    result = invoke("dedup", "--threshold", "0.001", "--json", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    [group] = json.loads(result.stdout)
    assert {group["keeper"]["path"], group["duplicates"][0]["path"]} == {str(photos[0]), str(tmp_path / "p" / "copy.png")}
    assert "nearest-neighbour graph" in result.stderr and "pair recall" not in result.stdout
