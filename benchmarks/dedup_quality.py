"""Dedup quality and speed: duplicate-pair precision/recall/F1 against pHash, and the time for 100k vectors.

The near-duplicate set of benchmarks/neardup_set.py (real photos and upscaled CIFAR-10 test images, each with
edited copies) is split by group: even groups calibrate the threshold, odd groups are deduplicated. A pair of
images is a true duplicate pair when both come from the same original; a predicted pair when `simsearch dedup`
puts both in one group (connected components of the pairs within the threshold, as the command does).

  (a) the shipped model at the threshold calibrated on the other half (`simsearch calibrate --target-fpr`)
  (b) the shipped model at its best threshold on the evaluated half (an oracle, the footing pHash gets)
  (c) pHash (imagehash, 64 bits, Hamming distance) at its best threshold on the evaluated half

then times `duplicate_groups` on 100k synthetic 128-d vectors (with planted near-duplicates).

    python benchmarks/dedup_quality.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import neardup_set  # noqa: E402
from near_duplicates import embed, phash_distances  # noqa: E402
from retrieval.datasets.locate import datasets_root  # noqa: E402
from retrieval.decisions.calibration import calibrate  # noqa: E402
from retrieval.decisions.dedup import Candidate, connected_groups, duplicate_groups  # noqa: E402
from retrieval.models.model import load_default_model  # noqa: E402
from retrieval.vectors.unit_distance import pairwise_distances  # noqa: E402

DATASETS = datasets_root()
CACHE = REPO / "benchmarks" / ".cache"
RESULTS = REPO / "benchmarks" / "results" / "dedup.jsonl"


def true_pairs(groups: np.ndarray) -> set[tuple[int, int]]:
    pairs = set()
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        pairs |= {(int(a), int(b)) for i, a in enumerate(members) for b in members[i + 1:]}
    return pairs


def predicted_pairs(distances: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    first, second = np.nonzero(np.triu(distances <= threshold, k=1))
    pairs = set()
    for members in connected_groups(len(distances), first, second):
        members = np.sort(members)
        pairs |= {(int(a), int(b)) for i, a in enumerate(members) for b in members[i + 1:]}
    return pairs


def prf(predicted: set[tuple[int, int]], truth: set[tuple[int, int]]) -> tuple[float, float, float]:
    hits = len(predicted & truth)
    precision = hits / len(predicted) if predicted else 1.0
    recall = hits / len(truth)
    return precision, recall, 2 * precision * recall / (precision + recall) if hits else 0.0


def best_threshold(distances: np.ndarray, truth: set[tuple[int, int]], candidates: np.ndarray
                   ) -> tuple[float, tuple[float, float, float]]:
    scored = [(t, prf(predicted_pairs(distances, t), truth)) for t in candidates]
    return max(scored, key=lambda item: item[1][2])


def calibration_pairs(distances: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    same = groups[:, None] == groups[None, :]
    upper = np.triu(np.ones_like(same), k=1)
    return distances[same & upper], distances[~same & upper]


def time_100k(count: int, dim: int, threshold: float, seed: int) -> tuple[float, int]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    planted = rng.choice(count, size=count // 100, replace=False)
    vectors[planted] = vectors[(planted + 1) % count] + 0.1 * rng.standard_normal((len(planted), dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    owners = [[Candidate(f"/synthetic/{i:06d}.jpg", 100, 100, i)] for i in range(count)]
    started = time.perf_counter()
    groups = duplicate_groups(vectors, owners, threshold)
    return time.perf_counter() - started, len(groups)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--cifar", type=int, default=1000)
    parser.add_argument("--target-fpr", type=float, default=1e-4)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    console = Console(width=150)
    items = neardup_set.build(DATASETS, CACHE / f"neardup-{args.cifar}-{args.copies}", args.copies, args.cifar)
    groups = np.array([item.group for item in items])
    evaluated = groups % 2 == 1
    paths = [item.path for item in items]

    vectors = embed(load_default_model(), paths)
    model_distances = pairwise_distances(vectors, vectors)
    calibration_half = np.ix_(~evaluated, ~evaluated)
    same, different = calibration_pairs(model_distances[calibration_half], groups[~evaluated])
    calibrated = calibrate(same, different, "target-fpr", args.target_fpr, bootstrap=0)
    eval_distances = model_distances[np.ix_(evaluated, evaluated)]
    truth = true_pairs(groups[evaluated])
    rows = {"(a) shipped model, calibrated threshold": (calibrated.threshold, prf(
        predicted_pairs(eval_distances, calibrated.threshold), truth))}
    rows["(b) shipped model, best threshold"] = best_threshold(eval_distances, truth,
                                                               np.quantile(same, np.linspace(0.5, 1.0, 26)))
    eval_paths = [p for p, keep in zip(paths, evaluated) if keep]
    rows["(c) pHash, best threshold"] = best_threshold(phash_distances(eval_paths), truth, np.arange(0, 33))
    seconds, found = time_100k(args.vectors, 128, calibrated.threshold, seed=0)

    table = Table(title=f"dedup of {evaluated.sum()} images ({len(np.unique(groups[evaluated]))} originals with "
                        f"{args.copies} copies each), {len(truth)} true duplicate pairs")
    for column in ("method", "threshold", "precision", "recall", "F1"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for name, (threshold, (precision, recall, f1)) in rows.items():
        table.add_row(name, f"{threshold:.4g}", f"{precision:.3f}", f"{recall:.3f}", f"{f1:.3f}")
    console.print(table)
    console.print(f"dedup of {args.vectors:,} synthetic 128-d vectors at threshold {calibrated.threshold:.4f}: "
                  f"{seconds:.1f} s ({found} groups), {os.cpu_count()} cores")
    if not args.no_record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as handle:
            handle.write(json.dumps({
                "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "images": int(evaluated.sum()),
                "true_pairs": len(truth), "target_fpr": args.target_fpr,
                "results": {name: {"threshold": float(t), "precision": round(p, 4), "recall": round(r, 4),
                                   "f1": round(f, 4)} for name, (t, (p, r, f)) in rows.items()},
                "vectors": args.vectors, "dedup_seconds": round(seconds, 2), "cores": os.cpu_count(),
            }) + "\n")


if __name__ == "__main__":
    main()
