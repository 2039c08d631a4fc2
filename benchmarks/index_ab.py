"""Whole `simsearch index` wall time of this checkout beside another (an older commit), run alternately.

The machines are shared and their speed drifts within minutes, so a change is measured as a ratio of runs
interleaved in one session, on the folder of 12-megapixel JPEGs that `index_throughput.py` builds:

    git worktree add /tmp/before <commit>
    python benchmarks/index_ab.py --other /tmp/before --images 500 --rounds 4
"""

from __future__ import annotations

import argparse
import json
import shutil
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

RESULTS = REPO / "benchmarks" / "results" / "index_ab.jsonl"


def index_seconds(checkout: Path, folder: Path) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cli", "index", str(folder), "--index", str(Path(tmp) / "index")],
                       cwd=checkout, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--other", type=Path, required=True, help="the other checkout (a git worktree)")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=4, help="runs of each, alternating which goes first")
    args = parser.parse_args()
    if not (args.other / "cli").is_dir():
        sys.exit(f"not a simsearch checkout: {args.other}")
    if shutil.which("git") is None:
        sys.exit("git is needed to name the commits")
    folder = build_folder(args.images)
    warm_page_cache(folder)
    checkouts = {"this": REPO, "other": args.other}
    seconds: dict[str, list[float]] = {"this": [], "other": []}
    for round_ in range(args.rounds):
        for name in ("this", "other") if round_ % 2 == 0 else ("other", "this"):
            seconds[name].append(round(index_seconds(checkouts[name], folder), 2))
            print(f"{name:5s} {seconds[name][-1]:6.2f} s", flush=True)
    this, other = statistics.median(seconds["this"]), statistics.median(seconds["other"])
    result = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "images": args.images,
              "this": git_commit(REPO), "other": git_commit(args.other), "this_seconds": seconds["this"],
              "other_seconds": seconds["other"], "median_ratio_other_over_this": round(other / this, 3)}
    print(f"median {this:.2f} s ({args.images / this:.1f} images/s) vs {other:.2f} s ({args.images / other:.1f}): "
          f"this checkout takes {this / other:.0%} of the other's time")
    with RESULTS.open("a") as handle:
        handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
