"""`simsearch import` of many rows: wall time and peak resident memory, of this checkout and, with `--other`, of
another beside it (a git worktree of an older commit), in rounds that alternate which goes first.

The files are four Parquet files written by `write_parquet` (row groups of bounded size), of `--count` synthetic
unit vectors of the default model's 1,280 dimensions, tagged with the model of an index that has one demo photo
indexed; built once under `benchmarks/.cache/import-memory-<count>-v1/` and reused. Each import goes into a fresh
copy of that index, in a process of its own, measured by `/usr/bin/time` (its maximum resident set size).

    git worktree add /tmp/before <commit>
    nice -n 5 python benchmarks/import_memory.py --other /tmp/before
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.index_throughput import git_commit  # noqa: E402
from benchmarks.results_file import append_result  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "import_memory.jsonl"
CACHE = REPO / "benchmarks" / ".cache"
PHOTO = REPO / "demo" / "photos" / "coffee.png"
FILES = 4


def build(count: int, folder: Path) -> list[Path]:
    """The index (one photo) and the `FILES` Parquet files of `count` rows under `folder` (made once)."""
    from retrieval.index import open_index
    from retrieval.sources.embedding_files import Embeddings, write_parquet

    files = [folder / f"rows-{number}.parquet" for number in range(FILES)]
    if all(file.is_file() for file in files):
        return files
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "cli", "index", str(PHOTO), "--index", str(folder / "index")],
                   check=True, cwd=REPO, capture_output=True)
    model = open_index(folder / "index").served_model()
    assert model is not None
    rng = np.random.default_rng(0)
    step = -(-count // FILES)
    for number, start in enumerate(range(0, count, step)):
        size = min(step, count - start)
        vectors = rng.standard_normal((size, model.embedding_dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        rows = [{"path": f"/import-memory/{row:07d}.jpg", "image_id": None, "label": None, "width": 640,
                 "height": 480, "size": 100_000 + row, "mtime_ns": 1_700_000_000_000_000_000,
                 "content_hash": hashlib.sha256(str(row).encode()).hexdigest()} for row in range(start, start + size)]
        write_parquet(files[number], Embeddings(model.content_hash, model.name, rows, vectors))
    return files


def import_once(checkout: Path, index: Path, files: list[Path]) -> tuple[float, int]:
    """(wall seconds, peak resident KB) of `simsearch import FILES` by `checkout`'s code into a copy of `index`."""
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / "index"
        shutil.copytree(index, target)
        done = subprocess.run(["/usr/bin/time", "-f", "%e %M", sys.executable, "-m", "cli", "import",
                               *map(str, files), "--index", str(target)],
                              cwd=checkout, check=True, capture_output=True, text=True)
    wall, peak = done.stderr.strip().splitlines()[-1].split()
    return float(wall), int(peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--other", type=Path, help="another checkout (git worktree) measured beside this one")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    folder = CACHE / f"import-memory-{args.count}-v1"
    files = build(args.count, folder)
    checkouts = {"this": REPO, **({"other": args.other.resolve()} if args.other else {})}
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name in checkouts}
    for round_number in range(args.rounds):
        order = list(checkouts) if round_number % 2 == 0 else list(reversed(checkouts))
        for name in order:
            runs[name].append(import_once(checkouts[name], folder / "index", files))
    table = Table(title=f"simsearch import of {args.count:,} rows x 1,280 in {FILES} Parquet files")
    for column in ("checkout", "commit", "wall s (median)", "peak resident MB (median)", "runs"):
        table.add_column(column, justify="right")
    record: dict[str, object] = {"count": args.count, "files": FILES, "rounds": args.rounds,
                                 "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for name, measured in runs.items():
        wall = statistics.median(seconds for seconds, _ in measured)
        peak = statistics.median(kb for _, kb in measured) / 1024
        commit = git_commit(checkouts[name])
        table.add_row(name, commit, f"{wall:.1f}", f"{peak:,.0f}",
                      ", ".join(f"{seconds:.1f} s / {kb / 1024:,.0f} MB" for seconds, kb in measured))
        record[name] = {"commit": commit, "wall_s": [seconds for seconds, _ in measured],
                        "peak_kb": [kb for _, kb in measured]}
    Console().print(table)
    if not args.no_record:
        append_result(RESULTS, record)


if __name__ == "__main__":
    main()
