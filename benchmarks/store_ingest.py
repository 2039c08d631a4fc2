"""Storage benchmark: ingest of image rows with their vectors through the index store, on SQLite and PostgreSQL.

Measured side by side in one run (the machines are shared and noisy):

- ingest rows/s at 100k and 1M rows (synthetic unit vectors; every row an indexed image with its own vector),
  written through `IndexStore.write_images` in batches as the pipeline writes them;
- two writers at once against PostgreSQL (two processes, different folders) beside one, in aggregate rows/s;
- `simsearch query` wall time on an index of 100k images on each backend: the first query (which builds the
  FAISS cache from the database) and the next ones (which read the cache).

PostgreSQL is a real server (Debian's binaries, started here as the tests start theirs, with fsync on). Results
are appended to `benchmarks/results/store_ingest.jsonl`.

    python benchmarks/store_ingest.py                 # 100k and 1M rows at dim 128, queries at 100k
    python benchmarks/store_ingest.py --sizes 20000   # a quick look
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from benchmarks.index_throughput import git_commit  # noqa: E402
from postgres_server import PostgresServer, missing_reason  # noqa: E402
from retrieval.index import SimilarityIndex, create_index  # noqa: E402
from retrieval.models.model_spec import DEFAULT_MODEL_FILE, read_model_header  # noqa: E402
from retrieval.store.index_store import ImageChange  # noqa: E402
from retrieval.store.schema import STATUS_OK  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "store_ingest.jsonl"
QUERY = REPO / "demo" / "queries" / "motorcycle_right.png"


def unit_rows(count: int, dim: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, dim), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def ingest(index: SimilarityIndex, model_id: int, count: int, dim: int, batch: int, prefix: str) -> float:
    """Seconds to write `count` indexed images with their vectors, `batch` per transaction."""
    started = time.perf_counter()
    for start in range(0, count, batch):
        vectors = unit_rows(min(batch, count - start), dim, seed=start)
        changes, data = [], []
        for i, vector in enumerate(vectors, start=start):
            digest = f"{prefix.encode().hex():0>8}{i:056d}"  # 64 hex digits, as the store reads hashes back
            changes.append(ImageChange(f"/photos/{prefix}/{i:08d}.jpg", STATUS_OK, size=1000 + i, mtime_ns=i,
                                       content_hash=digest, width=4000, height=3000, vector_hash=digest))
            data.append((digest, vector.tobytes()))
        index.store.write_images(model_id, changes, data)
    return time.perf_counter() - started


def new_index(folder: Path, url: str | None, dim: int) -> tuple[SimilarityIndex, int]:
    index = create_index(folder, url)
    record = index.store.register_model(f"{dim:064x}", f"bench-{dim}", "{}", dim)
    index.store.serve_first_model(record.id)
    return index, record.id


def _writer(url: str, folder: str, model_id: int, count: int, dim: int, batch: int, prefix: str,
            result: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    from retrieval.index import open_index

    index = open_index(Path(folder), url)
    with index.store.writer():
        result.put(ingest(index, model_id, count, dim, batch, prefix))


def concurrent_ingest(url: str, folder: Path, model_id: int, count: int, dim: int, batch: int,
                      writers: int) -> float:
    """Wall seconds for `writers` processes writing `count` rows each at once."""
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = context.Queue()  # type: ignore[type-arg]
    processes = [context.Process(target=_writer, args=(url, str(folder), model_id, count, dim, batch,
                                                       f"w{writers}p{i}", results)) for i in range(writers)]
    started = time.perf_counter()
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    if any(process.exitcode for process in processes):
        sys.exit("a writer failed")
    return time.perf_counter() - started


def query_seconds(folder: Path, url: str | None, runs: int) -> list[float]:
    command = [sys.executable, "-m", "cli", "query", str(QUERY), "--index", str(folder), "-k", "5"]
    if url:
        command += ["--db", url]
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds.append(time.perf_counter() - started)
    return seconds


def query_index(folder: Path, url: str | None, count: int) -> SimilarityIndex:
    """An index of `count` synthetic images served by the default model (so that `simsearch query` runs)."""
    index = create_index(folder, url)
    header = read_model_header(DEFAULT_MODEL_FILE)
    record = index.register_model_file(DEFAULT_MODEL_FILE, header)
    index.store.serve_first_model(record.id)
    ingest(index, record.id, count, header.spec.embedding_dim, 1000, "q")
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--small-batch", type=int, default=32, help="Also at the first size: the CLI's batch.")
    parser.add_argument("--query-images", type=int, default=100_000)
    parser.add_argument("--concurrent-rows", type=int, default=100_000, help="Rows per writer.")
    args = parser.parse_args()
    reason = missing_reason()
    if reason is not None:
        sys.exit(f"PostgreSQL cannot run here: {reason}")
    record: dict[str, object] = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                 "commit": git_commit(REPO), "dim": args.dim, "batch": args.batch}
    table = Table(title=f"index store: rows/s (dim {args.dim}, synthetic vectors)")
    for column in ("measure", "SQLite", "PostgreSQL", "PostgreSQL / SQLite"):
        table.add_column(column, justify="right" if column != "measure" else "left")
    server = PostgresServer(fsync=True)
    try:
        with tempfile.TemporaryDirectory(dir=REPO / "benchmarks" / ".cache") as tmp:
            work = Path(tmp)
            jobs = [(size, args.batch) for size in args.sizes] + [(args.sizes[0], args.small_batch)]
            for size, batch in jobs:
                rates = {}
                for backend in ("sqlite", "postgresql"):
                    url = None if backend == "sqlite" else server.new_database()
                    index, model_id = new_index(work / f"{backend}-{size}-{batch}", url, args.dim)
                    with index.store.writer():
                        seconds = ingest(index, model_id, size if batch == args.batch else size // 10, args.dim,
                                         batch, "r")
                    rates[backend] = (size if batch == args.batch else size // 10) / seconds
                    index.backend.engine.dispose()
                rows = size if batch == args.batch else size // 10
                name = f"ingest {rows:,} rows, {batch} a transaction"
                record[name] = {k: round(v) for k, v in rates.items()}
                table.add_row(name, f"{rates['sqlite']:,.0f}", f"{rates['postgresql']:,.0f}",
                              f"{rates['postgresql'] / rates['sqlite']:.2f}")
            url = server.new_database()
            _, model_id = new_index(work / "concurrent", url, args.dim)
            one = concurrent_ingest(url, work / "concurrent", model_id, args.concurrent_rows, args.dim, args.batch, 1)
            two = concurrent_ingest(url, work / "concurrent", model_id, args.concurrent_rows, args.dim, args.batch, 2)
            one_rate, two_rate = args.concurrent_rows / one, 2 * args.concurrent_rows / two
            record["postgresql writers"] = {"one_rows_per_s": round(one_rate), "two_rows_per_s": round(two_rate)}
            table.add_row(f"PostgreSQL, {args.concurrent_rows:,} rows a writer: one writer", "",
                          f"{one_rate:,.0f}", "")
            table.add_row("two writers at once (aggregate)", "", f"{two_rate:,.0f}",
                          f"{two_rate / one_rate:.2f} x one")
            query = {}
            for backend in ("sqlite", "postgresql"):
                url = None if backend == "sqlite" else server.new_database()
                index = query_index(work / f"query-{backend}", url, args.query_images)
                index.backend.engine.dispose()
                first, *rest = query_seconds(work / f"query-{backend}", url, 4)
                query[backend] = {"first_s": round(first, 2), "next_median_s": round(statistics.median(rest), 2)}
            record[f"query {args.query_images} images"] = query
            for key, label in (("first_s", "first (builds the FAISS cache)"), ("next_median_s", "next (median of 3)")):
                table.add_row(f"simsearch query, {args.query_images:,} images: {label}, s",
                              f"{query['sqlite'][key]:.2f}", f"{query['postgresql'][key]:.2f}",
                              f"{query['postgresql'][key] / query['sqlite'][key]:.2f}")
    finally:
        server.stop()
    Console().print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
