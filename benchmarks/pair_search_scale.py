"""Dedup's pair search at 1M x 1,280 dimensions (the default model's): time, peak resident memory and pair recall
of the partitioned search (`retrieval.vectors.partitioned_pairs`) against exact search on a random sample of queries.

The collection is synthetic, clustered around real photos' embeddings (the cached embeddings under
`benchmarks/.cache/embeddings/`, made by the other benchmarks): each vector is a real one plus noise of norm
`SPREAD` (two vectors of one photo lie about 0.78 apart, beyond the default threshold), and the last
`PLANTED_SHARE` of the vectors are near copies of the first (noise of norm 0.1 to 0.8: most within the threshold,
some beyond). It goes through `simsearch import` (four Parquet files) into an index whose model is the default one
(one demo photo indexed first), built once under `benchmarks/.cache/pair-search-<count>-v1/` and reused; the
import's time is recorded (`import_s`).

The search runs in a fresh process (`--search-only`), so its peak resident memory (`ru_maxrss`) is the search's
alone: `partitioned_pairs` over the index's stored vectors read as dedup reads them, with dedup's seed. Exact
pairs: for `--queries` random rows, a FAISS range search against every vector, a chunk of the collection at a
time; the recall is of the pairs involving those rows.

    nice -n 5 python benchmarks/pair_search_scale.py --queries 2000              # 1M vectors
    nice -n 5 python benchmarks/pair_search_scale.py --count 100000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.index_throughput import git_commit  # noqa: E402
from benchmarks.results_file import append_result  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "pair_search_scale.jsonl"
CACHE = REPO / "benchmarks" / ".cache"
PHOTO = REPO / "demo" / "photos" / "coffee.png"
SPREAD = 0.8
PLANTED_SHARE = 0.05
SHARDS = 4
THRESHOLD = 0.667
"""The default model's threshold for "the same photo"."""


def real_embeddings() -> np.ndarray:
    """The distinct real photo embeddings cached by the other benchmarks (L2-normalised)."""
    found = []
    for path in sorted((CACHE / "embeddings").glob("*")):
        data = np.load(path)
        found.append(data["vectors"] if path.suffix == ".npz" else data)
    if not found:
        raise SystemExit(f"no cached embeddings under {CACHE / 'embeddings'}: run benchmarks/dedup_collections.py")
    rows = np.concatenate(found).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return np.unique(rows.round(4), axis=0)


def synthetic(count: int, seed: int = 0) -> np.ndarray:
    """`count` unit vectors around the real ones (unequal weights), the last `PLANTED_SHARE` near copies of the
    first."""
    centres = real_embeddings()
    rng = np.random.default_rng(seed)
    weights = rng.pareto(1.5, len(centres)) + 1
    dim = centres.shape[1]
    vectors = np.empty((count, dim), np.float32)
    for start in range(0, count, 100_000):
        size = min(100_000, count - start)
        rows = centres[rng.choice(len(centres), size, p=weights / weights.sum())]
        rows += (SPREAD / np.sqrt(dim)) * rng.standard_normal((size, dim), dtype=np.float32)
        vectors[start:start + size] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    planted = int(count * PLANTED_SHARE)
    scale = rng.uniform(0.1, 0.8, (planted, 1)).astype(np.float32) / np.sqrt(dim)
    copies = vectors[:planted] + scale * rng.standard_normal((planted, dim), dtype=np.float32)
    vectors[count - planted:] = copies / np.linalg.norm(copies, axis=1, keepdims=True)
    return vectors


def build(count: int, folder: Path) -> dict[str, float]:
    """The index of `count` synthetic vectors under `folder`/index, made through `simsearch index` (one photo)
    and `simsearch import`; the seconds each step took."""
    from retrieval.index import open_index
    from retrieval.sources.embedding_files import Embeddings, write_parquet

    index_dir = folder / "index"
    timings: dict[str, float] = {}
    simsearch = [sys.executable, "-m", "cli"]
    subprocess.run([*simsearch, "index", str(PHOTO), "--index", str(index_dir)], check=True, cwd=REPO)
    model = open_index(index_dir).served_model()
    assert model is not None
    started = time.perf_counter()
    vectors = synthetic(count)
    timings["generate_s"] = time.perf_counter() - started
    files = []
    step = -(-count // SHARDS)
    for number, start in enumerate(range(0, count, step)):
        rows = [{"path": f"/pair-search/{row:07d}.jpg", "image_id": None, "label": None, "width": 640,
                 "height": 480, "size": 100_000 + row, "mtime_ns": 1_700_000_000_000_000_000,
                 "content_hash": hashlib.sha256(str(row).encode()).hexdigest()}
                for row in range(start, min(count, start + step))]
        path = folder / f"shard-{number}.parquet"
        write_parquet(path, Embeddings(model.content_hash, model.name, rows, vectors[start:start + len(rows)]))
        files.append(str(path))
    del vectors
    started = time.perf_counter()
    subprocess.run([*simsearch, "import", *files, "--index", str(index_dir)], check=True, cwd=REPO)
    timings["import_s"] = time.perf_counter() - started
    for file in files:
        Path(file).unlink()
    (folder / "built.json").write_text(json.dumps({"count": count, **timings}))
    return timings


def stored_source(index_dir: Path):  # type: ignore[no-untyped-def]
    """The served vectors of the index at `index_dir`, as dedup reads them."""
    from retrieval.index import open_index
    from retrieval.vectors.stored_vectors import StoredVectors

    index = open_index(index_dir)
    model = index.served_model()
    assert model is not None
    return StoredVectors(index, index.served_ids(), model.embedding_dim)


def search(index_dir: Path, pairs_file: Path) -> None:
    """The pair search as `simsearch dedup` runs it beyond `PARTITION_ABOVE` vectors (the same seed), in this
    process; prints its figures as JSON and saves the pairs to `pairs_file`."""
    from retrieval.vectors.partitioned_pairs import partitioned_pairs

    started = time.perf_counter()
    source = stored_source(index_dir)
    found = partitioned_pairs(source, THRESHOLD, seed=source.count)
    seconds = time.perf_counter() - started
    np.savez(pairs_file, first=found.first, second=found.second)
    print(json.dumps({"seconds": round(seconds, 1), "peak_rss_mb": round(resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024), "pairs": len(found.first), "cells": found.cells,
        "most_visits": found.most_visits, "border": round(found.border, 4), "mean_visits": round(found.mean_visits, 2),
        "dedup_recall": found.recall, "dedup_sampled": found.sampled}))


def exact_recall(index_dir: Path, first: np.ndarray, second: np.ndarray, queries: int) -> tuple[float, int]:
    """(recall, exact pairs): of the pairs within `THRESHOLD` involving `queries` random rows, found by FAISS
    range search against every row (a chunk of the collection at a time), the fraction among (first, second)."""
    import faiss

    from retrieval.vectors.unit_distance import radius_for_threshold

    source = stored_source(index_dir)
    rows = np.sort(np.random.default_rng(12345).permutation(source.count)[:queries])
    asked = source.rows(rows)
    exact = set()
    start = 0
    for chunk in source.chunks():
        flat = faiss.IndexFlatIP(source.dim)
        flat.add(chunk)
        limits, _, found = flat.range_search(asked, radius_for_threshold(THRESHOLD))
        owners = np.repeat(rows, np.diff(limits.astype(np.int64)))
        others = found.astype(np.int64) + start
        apart = owners != others
        exact |= set(zip(np.minimum(owners, others)[apart].tolist(), np.maximum(owners, others)[apart].tolist()))
        start += len(chunk)
    asked_rows = set(rows.tolist())
    got = {(a, b) for a, b in zip(first.tolist(), second.tolist()) if a in asked_rows or b in asked_rows}
    return len(exact & got) / max(1, len(exact)), len(exact)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=2000, help="rows whose pairs are searched exactly")
    parser.add_argument("--search-only", type=Path, metavar="PAIRS", help=argparse.SUPPRESS)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    folder = CACHE / f"pair-search-{args.count}-v1"
    if args.search_only:
        search(folder / "index", args.search_only)
        return
    built = folder / "built.json"
    if not built.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        build(args.count, folder)
    record = {"count": args.count, **json.loads(built.read_text())}
    pairs_file = folder / "pairs.npz"
    done = subprocess.run([sys.executable, __file__, "--count", str(args.count), "--search-only", str(pairs_file)],
                          check=True, capture_output=True, text=True, cwd=REPO)
    record.update(json.loads(done.stdout.strip().splitlines()[-1]))
    found = np.load(pairs_file)
    started = time.perf_counter()
    recall, exact = exact_recall(folder / "index", found["first"], found["second"], args.queries)
    record.update({"recall": round(recall, 4), "exact_pairs": exact, "queries": args.queries,
                   "exact_s": round(time.perf_counter() - started, 1), "threshold": THRESHOLD,
                   "dim": stored_source(folder / "index").dim, "commit": git_commit(REPO),
                   "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    table = Table(title=f"pair search over {args.count:,} vectors (threshold {THRESHOLD})")
    for column in ("cells", "border", "cells visited (mean, most)", "search s", "peak RSS MB", "pairs", "recall (exact, sampled)",
                   "dedup's own recall", "import s"):
        table.add_column(column, justify="right")
    table.add_row(str(record["cells"]), f"{record['border']:.3f}",
                  f"{record['mean_visits']:.2f}, {record['most_visits']}", f"{record['seconds']:.1f}",
                  f"{record['peak_rss_mb']:,}", f"{record['pairs']:,}",
                  f"{recall:.3f} of {exact:,} ({args.queries:,} queries)",
                  "-" if record["dedup_recall"] is None else f"{record['dedup_recall']:.3f}",
                  f"{record['import_s']:.0f}")
    Console().print(table)
    if not args.no_record:
        append_result(RESULTS, record)


if __name__ == "__main__":
    main()
