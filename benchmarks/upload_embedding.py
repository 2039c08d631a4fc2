"""The server's embedding of a batch of uploads, side by side in one process on these cores: the plain call it
makes (`server.batching.embed_uploads`: decode each, one `Embedder` call) beside the library's path for files and
bytes that it made before (`retrieval.sources.embed.embed_sources`: a DataLoader in this process, read-ahead, a
SHA-256 of each upload, torch's threads set for the call and restored).

The end-to-end load (`benchmarks/server_load.py --other`) swings by a third between runs on a shared 2-core
machine; this isolates the one step that changed. Batches of 1, 8 and 32 demo images, the default model on the
CPU, rounds alternating which goes first; the vectors of both are checked equal. Appends a line to
`benchmarks/results/upload_embedding.jsonl`.

    python benchmarks/upload_embedding.py --rounds 15
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.index_throughput import git_commit  # noqa: E402
from benchmarks.server_load import IMAGES  # noqa: E402
from retrieval.models.embedding import Embedder  # noqa: E402
from retrieval.models.model import load_default_model  # noqa: E402
from retrieval.sources.embed import embed_sources  # noqa: E402
from retrieval.sources.images import DEFAULT_MAX_PIXELS  # noqa: E402
from server.batching import embed_uploads  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "upload_embedding.jsonl"
BATCHES = (1, 8, 32)
VECTOR_TOLERANCE = 1e-5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    model = load_default_model()
    embedder = Embedder(model, torch.device("cpu"))
    payloads = [image.read_bytes() for image in IMAGES]
    ways: dict[str, Callable[[list[bytes]], np.ndarray]] = {
        "one Embedder call": lambda datas: np.stack([result.vector for result in embed_uploads(
            embedder, model.preprocessing, datas, DEFAULT_MAX_PIXELS)]),
        "embed_sources": lambda datas: np.stack([result.vector for result in embed_sources(
            embedder, datas, DEFAULT_MAX_PIXELS, batch_size=32)]),
    }
    seconds: dict[str, dict[int, list[float]]] = {name: {size: [] for size in BATCHES} for name in ways}
    for size in BATCHES:
        datas = [payloads[i % len(payloads)] for i in range(size)]
        vectors = {name: way(datas) for name, way in ways.items()}  # warm-up, and the answers compared
        first, second = vectors.values()
        if not np.allclose(first, second, atol=VECTOR_TOLERANCE):
            raise SystemExit(f"the two ways give different vectors for a batch of {size}")
        for round_ in range(args.rounds):
            order = list(ways) if round_ % 2 == 0 else list(reversed(ways))
            for name in order:
                started = time.perf_counter()
                ways[name](datas)
                seconds[name][size].append(time.perf_counter() - started)
    medians = {size: [statistics.median(seconds[name][size]) for name in ways] for size in BATCHES}
    ratios = {str(size): round(plain / before, 3) for size, (plain, before) in medians.items()}
    table = Table("batch", *(f"{name} ms" for name in ways), "ratio (time)",
                  title=f"Embedding a batch of uploads, default model, CPU ({torch.get_num_threads()} threads), "
                        f"median of {args.rounds} alternating rounds")
    for size, times in medians.items():
        table.add_row(str(size), *(f"{1000 * time_:.1f}" for time_ in times), f"{ratios[str(size)]:.2f}")
    Console(width=140).print(table)
    record = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(REPO),
              "rounds": args.rounds, "seconds": seconds, "time_ratio_plain_over_embed_sources": ratios}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
