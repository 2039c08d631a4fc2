"""What Ray costs on one machine: `simsearch index` of the same folder of 12-megapixel JPEGs (the one
`index_throughput.py` builds; default 2,000) on the same 2 cores, run in turn, round after round:

- `local`: the local pipeline;
- `ray-local`: `--ray local`, a Ray started for the run and stopped after it;
- `ray-cluster`: `--ray ADDRESS` of a running one-node Ray of 2 CPUs (a cluster is up before its jobs);
- `ray-2-nodes`: `--ray ADDRESS` of a running cluster of two nodes of 1 CPU each on this machine (a head and a
  worker, each with its own raylet and object store): the multi-worker case, batches crossing between nodes.

The measure is the whole command's wall time, start-up included: what a user waits. Results are appended to
`benchmarks/results/ray_overhead.jsonl`.

    python benchmarks/ray_overhead.py --images 2000 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from benchmarks.index_throughput import build_folder, git_commit, warm_page_cache  # noqa: E402
from ray_cluster import ray_cluster  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "ray_overhead.jsonl"
RAY_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # the benchmark's own loopback clusters
ENGINES = ("local", "ray-local", "ray-cluster", "ray-2-nodes")


def index_seconds(folder: Path, ray: str | None) -> tuple[float, float]:
    """The wall time of one `simsearch index` into a new index, and the embedding rate it reports."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "cli", "index", str(folder), "--index", str(Path(tmp) / "index")]
        started = time.perf_counter()
        run = subprocess.run(command + (["--ray", ray] if ray else []), cwd=REPO, env=RAY_ENV, check=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - started
    rate = re.search(r"([\d.]+) images/s; index:", run.stderr)
    return seconds, float(rate.group(1)) if rate else 0.0


@contextmanager
def cluster_for(engine: str) -> Iterator[str | None]:
    """The `--ray` argument of `engine`, with the running cluster it names, if any."""
    if engine in ("local", "ray-local"):
        yield None if engine == "local" else "local"
        return
    with ray_cluster([2] if engine == "ray-cluster" else [1, 1]) as address:
        yield address


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    folder = build_folder(args.images)
    warm_page_cache(folder)
    seconds: dict[str, list[float]] = {name: [] for name in ENGINES}
    rates: dict[str, list[float]] = {name: [] for name in ENGINES}
    for round_ in range(args.rounds):
        for name in ENGINES if round_ % 2 == 0 else tuple(reversed(ENGINES)):
            with cluster_for(name) as address:  # up before the run and down after it: idle, it would load the others
                wall, rate = index_seconds(folder, address)
            seconds[name].append(round(wall, 2))
            rates[name].append(rate)
            print(f"{name:12} {wall:6.2f} s  (embedding {rate:.1f} images/s)", flush=True)
    local = statistics.median(seconds["local"])
    print(f"\n{'engine':12} {'median s':>9} {'images/s':>9} {'x local':>8}")
    for name in ENGINES:
        median = statistics.median(seconds[name])
        print(f"{name:12} {median:9.2f} {args.images / median:9.1f} {median / local:8.2f}")
    record = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(REPO),
              "images": args.images, "cores": os.cpu_count(), "seconds": seconds, "embedding_rates": rates,
              "over_local": {name: round(statistics.median(seconds[name]) / local, 3) for name in ENGINES}}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
