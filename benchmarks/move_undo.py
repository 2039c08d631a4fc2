"""Actions that can be undone, timed: `dedup --move-to` then `undo` on about 1,000 proposed files, every file checked
back byte for byte.

A generated collection: ORIGINALS small photos (smooth random colour fields, as the tests make them), each with
an exact copy (`_copy.png`, the same bytes) and a near copy (`_edit.png`, one pixel changed: other bytes, another
content hash, embedded on its own), all in subfolders of 100. Indexed with the model given (default: the shipped
one) and deduplicated at `--threshold` (default 0.02: the shipped calibration, 1.196, groups these look-alike
fields with each other, the issue's complaint), then, through the library the CLI calls (`retrieval.decisions.moves`):

- move: every proposed duplicate moved under a folder on the same file system (a hard link and an unlink each,
  after its identity check, its SHA-256 and its manifest line fsynced), the moved files leaving the index;
- undo: every file put back and added back to the index with its stored vector;
- the same under a folder on another file system (`--across`, default /dev/shm where it is one): copy, fsync,
  read back, link into place, then remove;

each followed by a dedup (none proposed after the move; as many as before after the undo) and a SHA-256 of every
file of the collection against the one taken before. A table of each step's seconds is printed, and the figures
appended to `benchmarks/results/move_undo.jsonl`.

    python benchmarks/move_undo.py                   # 500 originals: 1,000 proposed files
    python benchmarks/move_undo.py --originals 50    # a quick look
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from benchmarks.index_throughput import git_commit  # noqa: E402
from conftest import photo  # noqa: E402
from indexer.pipeline import IndexOptions, index_paths  # noqa: E402
from retrieval.collection import Collection  # noqa: E402
from retrieval.decisions.moves import move_duplicates, undo_moves  # noqa: E402
from retrieval.index import create_index  # noqa: E402
from retrieval.models.model import load_model  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "move_undo.jsonl"
PER_FOLDER = 100


def make_collection(root: Path, originals: int) -> None:
    for i in range(originals):
        folder = root / f"set{i // PER_FOLDER:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        image = photo(10_000 + i, (160, 120))
        image.save(folder / f"IMG_{i:04d}.png")
        shutil.copyfile(folder / f"IMG_{i:04d}.png", folder / f"IMG_{i:04d}_copy.png")
        image.putpixel((0, 0), tuple(255 - value for value in image.getpixel((0, 0))))
        image.save(folder / f"IMG_{i:04d}_edit.png")


def digests(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def timed(step: str, seconds: dict[str, float], work):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    result = work()
    seconds[step] = round(time.perf_counter() - started, 3)
    return result


def round_trip(collection: Collection, photos: Path, target: Path, threshold: float, before: dict[str, str],
               proposed: int, label: str, seconds: dict[str, float]) -> dict[str, object]:
    """Move every proposed duplicate under `target`, dedup, undo, check every byte, dedup again."""
    index = collection.index
    assert index is not None
    groups = collection.find_duplicates(threshold).groups
    moved = timed(f"move ({label})", seconds, lambda: move_duplicates(index, groups, target, [str(photos)]))
    left = timed(f"dedup after the move ({label})", seconds,
                 lambda: sum(len(g.others) for g in collection.find_duplicates(threshold).groups))
    undone = timed(f"undo ({label})", seconds, lambda: undo_moves(moved.manifest, index))
    same = timed(f"sha256 of every file ({label})", seconds, lambda: digests(photos) == before)
    back = timed(f"dedup after the undo ({label})", seconds,
                 lambda: sum(len(g.others) for g in collection.find_duplicates(threshold).groups))
    assert not moved.refused and not undone.failed and not undone.to_index, (moved.refused[:3], undone.failed[:3])
    assert left == 0 and back == proposed and same, (left, back, same)
    return {"moved": len(moved.moved), "refused": len(moved.refused), "restored": len(undone.restored),
            "reindexed": undone.reindexed, "proposed_after_move": left, "proposed_after_undo": back,
            "every_file_back_byte_for_byte": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--originals", type=int, default=500, help="photos, each with an exact and a near copy")
    parser.add_argument("--model", default=None, help="a model file (default: the shipped photo model)")
    parser.add_argument("--threshold", type=float, default=0.02)
    parser.add_argument("--across", type=Path, default=Path("/dev/shm"),
                        help="a folder on another file system ('' to skip)")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="move-undo-") as scratch:
        work = Path(scratch)
        photos = work / "photos"
        timed("generate", seconds, lambda: make_collection(photos, args.originals))
        before = digests(photos)
        index = create_index(work / ".simsearch")
        model = load_model(Path(args.model)) if args.model else None
        summary = timed("index", seconds, lambda: index_paths(index, [photos], model,
                                                             IndexOptions(workers=args.workers)))
        collection = Collection(index)
        threshold = collection.threshold(args.threshold)
        groups = timed("dedup", seconds, lambda: collection.find_duplicates(threshold).groups)
        proposed = sum(len(g.others) for g in groups)
        copies = sum(sum(g.copies) for g in groups)
        runs = {"same file system": round_trip(collection, photos, work / "dups", threshold, before, proposed,
                                               "same fs", seconds)}
        across = args.across if str(args.across) not in ("", ".") else None
        if across is not None and across.is_dir() and across.stat().st_dev != work.stat().st_dev:
            target = Path(tempfile.mkdtemp(prefix="move-undo-", dir=across))
            try:
                runs["another file system"] = round_trip(collection, photos, target, threshold, before, proposed,
                                                         "other fs", seconds)
            finally:
                shutil.rmtree(target, ignore_errors=True)
    table = Table(title=f"move then undo: {len(before):,} files, {proposed:,} proposed ({copies:,} exact copies), "
                        f"threshold {threshold:.4f}", title_justify="left")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    table.add_column("ms a proposed file", justify="right")
    for step, value in seconds.items():
        per_file = f"{1000 * value / proposed:.2f}" if proposed and step.startswith(("move", "undo")) else ""
        table.add_row(step, f"{value:.2f}", per_file)
    Console().print(table)
    record = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(REPO),
              "files": len(before), "proposed": proposed, "exact_copies": copies, "threshold": threshold,
              "model": args.model or "default", "index_seconds_embedding": round(summary.embed_seconds, 3),
              "cores": os.cpu_count(),
              "seconds": seconds, "runs": runs}
    RESULTS.parent.mkdir(exist_ok=True)
    with open(RESULTS, "a") as results:
        results.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
