"""Does a calibrated threshold transfer to classes it was not calibrated on?

Two settings, each embedded with a model trained on other data of the same kind:

  Fashion-MNIST  a small CNN trained here on the 60k train images (classes as labels, triplet loss);
                 scored on the 10k test images.
  Omniglot       the small CNN of benchmarks/omniglot_oneshot.py (trained on images_background only);
                 scored on images_evaluation (659 characters of 20 alphabets).

For each: ROC AUC and accuracy at the best-accuracy threshold calibrated on all classes (same pairs capped at
200k, as many different pairs); then the classes are split in two halves (Omniglot: by alphabet) and the
threshold calibrated on one half is applied to the other, beside the other half's own threshold. Goal: the
transferred accuracy within 2 points of the own one.

    python benchmarks/calibration_transfer.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from idx_files import read_idx  # noqa: E402
from retrieval.datasets.locate import datasets_root  # noqa: E402
from retrieval.datasets.omniglot import load_characters  # noqa: E402
from retrieval.decisions.calibration import calibrate, choose_threshold, sample_calibration_pairs  # noqa: E402
from retrieval.models.embedding import Embedder  # noqa: E402
from retrieval.models.model import EmbeddingModel, load_model  # noqa: E402
from retrieval.models.training.encoder import EncoderTraining, train_encoder  # noqa: E402
from retrieval.vectors.unit_distance import paired_distances  # noqa: E402

DATASETS = datasets_root()
CACHE = REPO / "benchmarks" / ".cache"
RESULTS = REPO / "benchmarks" / "results" / "calibration.jsonl"
OMNIGLOT_MODEL = CACHE / "omniglot-small-cnn-triplet-semihard.safetensors"


def fashion(split: str) -> tuple[torch.Tensor, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(DATASETS / "fashion-mnist" / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(DATASETS / "fashion-mnist" / f"{prefix}-labels-idx1-ubyte.gz")
    return torch.from_numpy(images.copy()).unsqueeze(-1), labels.astype(np.int64)


def fashion_model(epochs: int, seed: int, log: Console) -> EmbeddingModel:
    path = CACHE / f"fashion-small-cnn-{epochs}-{seed}.safetensors"
    if path.exists():
        return load_model(path)
    pixels, labels = fashion("train")
    config = EncoderTraining(input_size=28, embedding_dim=64, classes_per_batch=10, images_per_class=16,
                             epochs=epochs, steps_per_epoch=200, validation_fraction=0.0, seed=seed,
                             name="fashion-mnist-small-cnn")
    started = time.perf_counter()
    trained = train_encoder(config, pixels, torch.from_numpy(labels),
                            on_epoch=lambda r: log.print(f"epoch {r.epoch}: loss {r.loss:.4f}"))
    log.print(f"trained the Fashion-MNIST model in {time.perf_counter() - started:.0f} s")
    path.parent.mkdir(parents=True, exist_ok=True)
    trained.model.save(path)
    return trained.model


def embed(model: EmbeddingModel, pixels: torch.Tensor) -> np.ndarray:
    embedder = Embedder(model)
    return np.concatenate([embedder.embed(pixels[i:i + 512]) for i in range(0, len(pixels), 512)])


def pair_distances(vectors: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    first, second, same = sample_calibration_pairs(labels, seed=seed)
    distances = paired_distances(vectors[first], vectors[second])
    return distances[same], distances[~same]


def accuracy_at(same: np.ndarray, different: np.ndarray, threshold: float) -> float:
    return float((np.sum(same <= threshold) + np.sum(different > threshold)) / (len(same) + len(different)))


def score(name: str, vectors: np.ndarray, labels: np.ndarray, halves: np.ndarray, seed: int) -> dict[str, object]:
    """`halves` is a boolean per item: True for the second half of the classes."""
    result = calibrate(*pair_distances(vectors, labels, seed), bootstrap=200, seed=seed)
    parts = [pair_distances(vectors[halves == h], labels[halves == h], seed) for h in (False, True)]
    thresholds = [choose_threshold(*part) for part in parts]
    transfers = []
    for source, target in ((0, 1), (1, 0)):
        own = accuracy_at(*parts[target], thresholds[target])
        moved = accuracy_at(*parts[target], thresholds[source])
        transfers.append({"from": source, "to": target, "own_threshold": thresholds[target],
                          "moved_threshold": thresholds[source], "own_accuracy": own, "moved_accuracy": moved,
                          "drop_points": 100 * (own - moved)})
    return {"setting": name, "images": len(labels), "classes": len(np.unique(labels)), "roc_auc": result.roc_auc,
            "threshold": result.threshold, "accuracy": result.accuracy,
            "accuracy_interval": [result.accuracy_interval.low, result.accuracy_interval.high]
            if result.accuracy_interval else None, "transfers": transfers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8, help="Fashion-MNIST training epochs of 200 steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    console = Console(width=150)
    torch.manual_seed(args.seed)

    rows = []
    pixels, labels = fashion("test")
    vectors = embed(fashion_model(args.epochs, args.seed, console), pixels)
    rows.append(score("Fashion-MNIST test (classes 0-4 | 5-9)", vectors, labels, labels >= 5, args.seed))

    if not OMNIGLOT_MODEL.exists():
        sys.exit(f"{OMNIGLOT_MODEL} missing: run `python -m benchmarks.omniglot_oneshot` first")
    model = load_model(OMNIGLOT_MODEL)
    evaluation = load_characters("evaluation", model.preprocessing.size[0])
    vectors = embed(model, evaluation.images.unsqueeze(-1))
    labels = evaluation.labels.numpy()
    alphabet = evaluation.alphabet_of_class.numpy()[labels]
    rows.append(score("Omniglot evaluation (alphabets 1-10 | 11-20)", vectors, labels,
                      alphabet >= len(evaluation.alphabets) // 2, args.seed))

    table = Table(title="calibration: best-accuracy threshold, and its transfer to unseen classes")
    for column in ("setting", "ROC AUC", "threshold", "accuracy", "half -> other half", "own", "transferred",
                   "drop"):
        table.add_column(column, justify="left" if column == "setting" else "right")
    for row in rows:
        for i, t in enumerate(row["transfers"]):  # type: ignore[union-attr]
            first = i == 0
            table.add_row(row["setting"] if first else "", f"{row['roc_auc']:.4f}" if first else "",
                          f"{row['threshold']:.4f}" if first else "", f"{row['accuracy']:.4f}" if first else "",
                          f"{'AB'[t['from']]} -> {'AB'[t['to']]}", f"{t['own_accuracy']:.4f}",
                          f"{t['moved_accuracy']:.4f}", f"{t['drop_points']:+.2f} pt")
    console.print(table)
    if not args.no_record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as handle:
            handle.write(json.dumps({"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                     "fashion_epochs": args.epochs, "seed": args.seed,
                                     "omniglot_model": OMNIGLOT_MODEL.name, "rows": rows}) + "\n")


if __name__ == "__main__":
    main()
