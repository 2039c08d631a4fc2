"""Finding near-duplicates: the shipped model against the raw backbone and a perceptual hash, in one run.

The set (benchmarks/neardup_set.py): real photos and upscaled CIFAR-10 test images as originals, each with
edited copies (crop, rescale, JPEG 30-90, flip, small rotation, brightness/contrast, text). For every copy:

  recall@1   its nearest image, among all originals and all copies except its own siblings, is its original
  ROC AUC    same/different: (copy, its original) pairs against (copy, another original) pairs

for (a) the shipped default model, (b) the raw pretrained backbone features (mean-pooled EfficientNet-Lite0),
(c) the `imagehash` pHash (64 bits, Hamming distance).

    python benchmarks/near_duplicates.py
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
from indexer.loading import default_workers, make_loader  # noqa: E402
from indexer.plan import Work  # noqa: E402
from indexer.scan import stat_file  # noqa: E402
from retrieval.embedding import Embedder  # noqa: E402
from retrieval.metrics import roc_auc  # noqa: E402
from retrieval.model import EmbeddingModel, load_default_model, load_model, load_pretrained_backbone_model  # noqa: E402

DATASETS = Path(os.environ.get("SIMSEARCH_DATASETS", REPO.parent / "shared" / "datasets"))
CACHE = REPO / "benchmarks" / ".cache"
RESULTS = REPO / "benchmarks" / "results" / "near_duplicates.jsonl"


def embed(model: EmbeddingModel, paths: list[Path]) -> np.ndarray:
    embedder = Embedder(model)
    works = [Work(stat_file(str(p)), None) for p in paths]  # type: ignore[arg-type]
    loader = make_loader(works, embedder.model.preprocessing, batch_size=32, workers=default_workers(),
                         max_pixels=100_000_000, pin_memory=False)
    return np.concatenate([embedder.embed(batch.pixels) for batch in loader])


def phash_distances(paths: list[Path]) -> np.ndarray:
    import imagehash
    from PIL import Image

    bits = np.stack([imagehash.phash(Image.open(p)).hash.flatten() for p in paths])
    return (bits[:, None, :] != bits[None, :, :]).sum(axis=2).astype(np.float64)


def scores(distances: np.ndarray, groups: np.ndarray, originals: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """recall@1 and ROC AUC from a full distance matrix."""
    copies = np.flatnonzero(~originals)
    original_of = {int(g): int(i) for i, g in enumerate(groups) if originals[i]}
    hits = []
    same, different = [], []
    original_ids = np.flatnonzero(originals)
    for q in copies:
        row = distances[q].copy()
        siblings = (groups == groups[q]) & ~originals
        row[siblings] = np.inf
        hits.append(int(np.argmin(row)) == original_of[int(groups[q])])
        same.append(distances[q, original_of[int(groups[q])]])
        others = rng.choice(original_ids[groups[original_ids] != groups[q]], size=5, replace=False)
        different.extend(distances[q, others])
    return float(np.mean(hits)), roc_auc(np.array(same), np.array(different))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--cifar", type=int, default=1000, help="CIFAR-10 test images among the originals")
    parser.add_argument("--model", type=Path, default=None, help="score this model file as (a) instead")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    console = Console()
    items = neardup_set.build(DATASETS, CACHE / f"neardup-{args.cifar}-{args.copies}", args.copies, args.cifar)
    paths = [item.path for item in items]
    groups = np.array([item.group for item in items])
    originals = np.array([item.is_original for item in items])
    console.print(f"{originals.sum()} originals, {(~originals).sum()} copies")

    rows = {}
    shipped = load_default_model if args.model is None else lambda: load_model(args.model)
    for name, loader in [("(a) shipped model" if args.model is None else f"(a) {args.model.name}", shipped),
                         ("(b) raw backbone features", load_pretrained_backbone_model)]:
        started = time.perf_counter()
        vectors = embed(loader(), paths)
        distances = np.clip(2.0 - 2.0 * vectors @ vectors.T, 0.0, None)
        rows[name] = (*scores(distances, groups, originals, np.random.default_rng(0)), time.perf_counter() - started)
    started = time.perf_counter()
    rows["(c) pHash (imagehash)"] = (*scores(phash_distances(paths), groups, originals, np.random.default_rng(0)),
                                     time.perf_counter() - started)

    table = Table(title=f"near-duplicates: {originals.sum()} originals, {(~originals).sum()} edited copies")
    for column in ("method", "recall@1", "ROC AUC", "seconds"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for name, (recall, auc, seconds) in rows.items():
        table.add_row(name, f"{recall:.3f}", f"{auc:.4f}", f"{seconds:.0f}")
    console.print(table)
    if not args.no_record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as handle:
            handle.write(json.dumps({
                "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "originals": int(originals.sum()), "copies": int((~originals).sum()),
                "default_model": shipped().spec.name,
                "results": {name: {"recall_at_1": round(r, 4), "roc_auc": round(a, 4)} for name, (r, a, _) in rows.items()},
            }) + "\n")


if __name__ == "__main__":
    main()
