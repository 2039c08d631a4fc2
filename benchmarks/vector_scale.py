"""Search that grows with the collection, measured on 1M x 128 clustered synthetic vectors on these 2 cores.

In one run, side by side:

- each band's index beside exact Flat: build time (training on the random sample + adding), memory, recall@1 and
  recall@10 against exact on 1000 held-out queries (drawn like the collection, not in it), single-query and
  batched ms a query, at the nprobe tuned for recall@10 >= 0.95 on the collection's own held-out queries;
- cold `simsearch query` wall time on a 1k-vector index and on the 1M one (a fresh process each; the FAISS file
  already built, as after any `simsearch index`), and the first query after adding 1,000 vectors to the 1M index;
- dedup of the 1M vectors (10,000 of them planted near-copies): the pair search through the approximate index as
  a kNN graph, its time and its pair recall against exact search on a 1000-vector sample.

The indexes' vectors are synthetic, so the query image is embedded by a random 128-d model (the cost measured is
the index's, not a trained model's). Results are appended to `benchmarks/results/vector_scale.jsonl`.

    python benchmarks/vector_scale.py              # 1M vectors
    python benchmarks/vector_scale.py --count 200000
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.index_throughput import git_commit  # noqa: E402
from retrieval.decisions.dedup import index_duplicates  # noqa: E402
from retrieval.index import SimilarityIndex, create_index, open_index  # noqa: E402
from retrieval.models.model import build_model  # noqa: E402
from retrieval.models.model_spec import ModelSpec  # noqa: E402
from retrieval.sources.images import Preprocessing  # noqa: E402
from retrieval.store.index_store import ImageChange  # noqa: E402
from retrieval.store.schema import STATUS_OK  # noqa: E402
from retrieval.store.vector_index import VectorIndex  # noqa: E402
from retrieval.vectors.faiss_factory import EXACT, choose_description, index_bytes, list_count  # noqa: E402
from retrieval.vectors.vector_tuning import tune  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "vector_scale.jsonl"
QUERY = REPO / "demo" / "queries" / "motorcycle_right.png"
DIM = 128
PLANTED = 10_000
THRESHOLD = 0.08
"""Squared L2 within which dedup pairs vectors: the planted near-copies lie at about 0.05."""


def clustered(count: int, seed: int) -> np.ndarray:
    """Unit vectors around 1000 centres of unequal weight, as embeddings of a collection fall."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, DIM)).astype(np.float32)
    weights = rng.pareto(1.5, 1000) + 1
    rows = centres[rng.choice(1000, count, p=weights / weights.sum())]
    rows += 0.6 * rng.standard_normal((count, DIM), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def collection(count: int) -> tuple[np.ndarray, np.ndarray]:
    """The collection (its last `PLANTED` rows near-copies of its first) and 1000 held-out queries drawn like it."""
    drawn = clustered(count + 1000, seed=0)
    vectors, queries = drawn[:count].copy(), drawn[count:]
    rng = np.random.default_rng(1)
    copies = vectors[:PLANTED] + 0.02 * rng.standard_normal((PLANTED, DIM), dtype=np.float32)
    vectors[-PLANTED:] = copies / np.linalg.norm(copies, axis=1, keepdims=True)
    return vectors, queries


def recall_at(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    return float(np.mean([len(np.intersect1d(f[:k], e[:k])) / k for f, e in zip(found, exact)]))


def bands(vectors: np.ndarray, queries: np.ndarray, table: Table) -> dict[str, object]:
    """Each band's kind for this size (exact, by size, under a quarter of the memory) beside the others."""
    count = len(vectors)
    memory_band = index_bytes(choose_description(count, DIM), count, DIM) // 4
    kinds = [EXACT, choose_description(count, DIM), choose_description(count, DIM, memory_band)]
    return measure_kinds(vectors, queries, kinds, table)


def kinds_table(title: str) -> Table:
    table = Table(title=title)
    for column in ("index", "build s", "memory MiB", "nprobe", "recall@1", "recall@10", "1 query ms",
                   "batched ms/q"):
        table.add_column(column, justify="left" if column == "index" else "right")
    return table


def measure_kinds(vectors: np.ndarray, queries: np.ndarray, kinds: list[str], table: Table) -> dict[str, object]:
    """Build, tune (recall@10 >= 0.95 on the collection's own held-out queries) and measure each kind on
    `queries` against exact search; a row of `table` each."""
    count, dim = vectors.shape
    ids = np.arange(count, dtype=np.int64)
    _, exact = VectorIndex.build(dim, ids, vectors).search(queries, 10)
    record = {}
    for kind in kinds:
        started = time.perf_counter()
        index = VectorIndex.build(dim, ids, vectors, kind, seed=7)
        build = time.perf_counter() - started
        tuning = tune(index, ids, vectors, 0.95, seed=3)
        started = time.perf_counter()
        _, found = index.search(queries, 10)
        batched = 1000 * (time.perf_counter() - started) / len(queries)
        single = []
        for query in queries[:100]:
            started = time.perf_counter()
            index.search(query[None], 10)
            single.append(1000 * (time.perf_counter() - started))
        row = {"build_s": round(build, 1), "memory_mb": round(index_bytes(kind, count, dim) / 2**20, 1),
               "nprobe": tuning.nprobe, "recall@1": round(recall_at(found, exact, 1), 4),
               "recall@10": round(recall_at(found, exact, 10), 4), "single_ms": round(statistics.median(single), 3),
               "batched_ms": round(batched, 3)}
        record[kind] = row
        table.add_row(kind, f"{row['build_s']:.1f}", f"{row['memory_mb']:,.0f}", str(row["nprobe"] or "-"),
                      f"{row['recall@1']:.4f}", f"{row['recall@10']:.4f}", f"{row['single_ms']:.2f}",
                      f"{row['batched_ms']:.3f}")
    return record


def model_file(folder: Path) -> Path:
    torch.manual_seed(0)
    spec = ModelSpec(name="random-128", backbone="small-cnn", embedding_dim=DIM,
                     preprocessing=Preprocessing(size=(32, 32), mode="RGB", mean=127.5, std=64.0),
                     backbone_options={"channels": [8, 8]})
    path = folder / "random-128.safetensors"
    build_model(spec).save(path)
    return path


def filled(folder: Path, vectors: np.ndarray, model: Path) -> SimilarityIndex:
    from retrieval.models.model import load_model

    index = create_index(folder)
    record = index.register_model(load_model(model))
    model_id = index.store.serve_first_model(record.id).id
    add(index, model_id, vectors, 0)
    index.vector_index()  # built once, as `simsearch index` leaves it
    return index


def add(index: SimilarityIndex, model_id: int, vectors: np.ndarray, start: int) -> None:
    for first in range(0, len(vectors), 5000):
        part = range(first, min(first + 5000, len(vectors)))
        index.store.write_images(model_id, [
            ImageChange(f"/photos/{start + i:08d}.jpg", STATUS_OK, size=1, mtime_ns=1, width=10, height=10,
                        content_hash=f"{start + i:064d}", vector_hash=f"{start + i:064d}") for i in part],
            [(f"{start + i:064d}", vectors[i].tobytes()) for i in part])


def query_seconds(folder: Path, runs: int = 3) -> list[float]:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cli", "query", str(QUERY), "--index", str(folder), "-k", "5"],
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000)
    args = parser.parse_args()
    record: dict[str, object] = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                 "commit": git_commit(REPO), "count": args.count, "dim": DIM}
    vectors, queries = collection(args.count)
    console = Console(width=150)
    table = kinds_table(f"{args.count:,} x {DIM} clustered vectors, 1000 held-out queries")
    record["bands"] = bands(vectors, queries, table)
    console.print(table)
    with tempfile.TemporaryDirectory(dir=REPO / "benchmarks" / ".cache") as tmp:
        work = Path(tmp)
        model = model_file(work)
        small = filled(work / "small", vectors[:1000], model)
        started = time.perf_counter()
        large = filled(work / "large", vectors, model)
        fill_seconds = time.perf_counter() - started
        info = large.vector_info()
        small_cold, large_cold = query_seconds(work / "small"), query_seconds(work / "large")
        model_id = large.served_model().id  # type: ignore[union-attr]
        add(large, model_id, clustered(1000, seed=0)[::-1].copy(), args.count)
        after_add = query_seconds(work / "large", runs=1)[0]
        grown = open_index(work / "large").vector_info()
        started = time.perf_counter()
        found = index_duplicates(open_index(work / "large"), threshold=THRESHOLD)
        dedup_seconds = time.perf_counter() - started
        record["index"] = {"fill_and_build_s": round(fill_seconds, 1), "kind": info.description,  # type: ignore[union-attr]
                           "nprobe": info.tuning.nprobe, "recall@10": info.tuning.recall_at_10}  # type: ignore[union-attr]
        record["cold_query_s"] = {"1k": [round(s, 2) for s in small_cold], "1M": [round(s, 2) for s in large_cold],
                                  "after_adding_1000": round(after_add, 2),
                                  "grown_not_rebuilt": grown.tuned_count == info.tuned_count}  # type: ignore[union-attr]
        record["dedup"] = {"seconds": round(dedup_seconds, 1), **found.pairs.to_dict()}
        del small
    summary = Table(title="the index as simsearch keeps it")
    summary.add_column("measure")
    summary.add_column("value", justify="right")
    summary.add_row(f"kind chosen for {args.count:,} (4 sqrt(N) = {4 * args.count ** 0.5:,.0f} lists, "
                    f"{list_count(args.count)} as a power of 2)", f"{info.description}, nprobe {info.tuning.nprobe}")  # type: ignore[union-attr]
    summary.add_row("ingest + build + tune (s)", f"{fill_seconds:.1f}")
    summary.add_row("cold `simsearch query`, 1k / 1M vectors (median of 3, s)",
                    f"{statistics.median(small_cold):.2f} / {statistics.median(large_cold):.2f} "
                    f"({statistics.median(large_cold) / statistics.median(small_cold):.2f}x)")
    summary.add_row("first query after adding 1,000 vectors (s; grown, not rebuilt: "
                    f"{record['cold_query_s']['after_adding_1000'] and grown.tuned_count == info.tuned_count})",  # type: ignore[index, union-attr]
                    f"{after_add:.2f}")
    recall = found.pairs.recall
    summary.add_row(f"dedup pair search of {args.count:,} (kNN graph, k={found.pairs.neighbours})",
                    f"{dedup_seconds:.1f} s, pair recall {recall if recall is None else round(recall, 4)}")
    console.print(summary)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
