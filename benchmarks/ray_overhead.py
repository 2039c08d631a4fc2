"""What Ray costs on one machine: `simsearch index` locally and with `--ray local` on the same 2 cores, runs
interleaved, on the folder of 12-megapixel JPEGs that `index_throughput.py` builds (default 500; the engine's own
overhead, start-up included, is the measure). Results are appended to `benchmarks/results/ray_overhead.jsonl`.

    python benchmarks/ray_overhead.py --images 500 --rounds 3
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.index_throughput import build_folder, git_commit, warm_page_cache  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "ray_overhead.jsonl"


def index_seconds(folder: Path, ray: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "cli", "index", str(folder), "--index", str(Path(tmp) / "index")]
        started = time.perf_counter()
        subprocess.run(command + (["--ray", "local"] if ray else []), cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    folder = build_folder(args.images)
    warm_page_cache(folder)
    seconds: dict[str, list[float]] = {"local": [], "ray": []}
    for round_ in range(args.rounds):
        for name in (("local", "ray") if round_ % 2 == 0 else ("ray", "local")):
            seconds[name].append(round(index_seconds(folder, name == "ray"), 2))
            print(f"{name:6} {seconds[name][-1]:.2f} s", flush=True)
    local, ray = statistics.median(seconds["local"]), statistics.median(seconds["ray"])
    print(f"median local {local:.2f} s ({args.images / local:.1f} images/s), --ray local {ray:.2f} s "
          f"({args.images / ray:.1f} images/s): Ray takes {ray / local:.0%} of the local time")
    record = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(REPO),
              "images": args.images, "local_seconds": seconds["local"], "ray_seconds": seconds["ray"],
              "ray_over_local": round(ray / local, 3)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
