"""The vector index's kinds on real embeddings: the default model's 1280-d vectors of real images of every part of
../shared/datasets (CIFAR-10, Fashion-MNIST, MNIST's test set, Omniglot, the photos; at most `PART_CAP` a part,
every n-th), beside exact Flat.

Synthetic clusters (`vector_scale.py`) say how the index scales; these say how it behaves on the distribution
users have. The collection is every image but 1000 held out as queries (drawn at random). For each kind: build
time, memory, the nprobe tuned for recall@10 >= 0.95 on the collection's own held-out queries, recall@1 and
recall@10 of the held-out queries against exact, single-query and batched ms a query. Embeddings are cached
under benchmarks/.cache/embeddings (by model hash). Results are appended to `benchmarks/results/vector_real.jsonl`.

    python benchmarks/vector_real.py
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from benchmarks.index_throughput import git_commit  # noqa: E402
from benchmarks.vector_scale import kinds_table, measure_kinds  # noqa: E402
from idx_files import read_idx  # noqa: E402
from retrieval.datasets.locate import datasets_root  # noqa: E402
from retrieval.models.embedding import Embedder  # noqa: E402
from retrieval.models.model import load_default_model  # noqa: E402
from retrieval.sources.decode import Source  # noqa: E402
from retrieval.sources.embed import embed_batches  # noqa: E402
from retrieval.vectors.faiss_factory import EXACT, list_count  # noqa: E402

DATASETS = datasets_root()
CACHE = REPO / "benchmarks" / ".cache" / "embeddings"
RESULTS = REPO / "benchmarks" / "results" / "vector_real.jsonl"
SUFFIXES = {".jpg", ".jpeg", ".png"}


def _zip_images(path: Path, prefix: str) -> Iterator[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        for name in sorted(n for n in archive.namelist() if Path(n).suffix.lower() in SUFFIXES):
            yield f"{prefix}/{name}", archive.read(name)


def _idx_images(path: Path, prefix: str) -> Iterator[tuple[str, bytes]]:
    for i, pixels in enumerate(read_idx(path)):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        yield f"{prefix}/{i:05d}.png", buffer.getvalue()


def _photos() -> Iterator[tuple[str, bytes]]:
    for path in sorted(p for p in (DATASETS / "photos").rglob("*") if p.suffix.lower() in SUFFIXES):
        yield str(path.relative_to(DATASETS)), path.read_bytes()


def parts() -> dict[str, Iterator[tuple[str, bytes]]]:
    """Every image of the shared datasets, by part: (name, encoded image) in a fixed order."""
    return {
        "cifar10-test": _zip_images(DATASETS / "cifar10" / "cifar10-test.zip", "cifar10"),
        "cifar10-train": _zip_images(DATASETS / "cifar10" / "cifar10-train.zip", "cifar10"),
        "fashion-mnist-test": _idx_images(DATASETS / "fashion-mnist" / "t10k-images-idx3-ubyte.gz", "fmnist-test"),
        "fashion-mnist-train": _idx_images(DATASETS / "fashion-mnist" / "train-images-idx3-ubyte.gz",
                                           "fmnist-train"),
        "mnist-test": _idx_images(DATASETS / "mnist" / "t10k-images-idx3-ubyte.gz", "mnist"),
        "omniglot-background": _zip_images(DATASETS / "omniglot" / "images_background.zip", "omniglot"),
        "omniglot-evaluation": _zip_images(DATASETS / "omniglot" / "images_evaluation.zip", "omniglot"),
        "photos": _photos(),
    }


def part_embeddings(name: str, images: Iterator[tuple[str, bytes]], embedder: Embedder, step: int) -> np.ndarray:
    """The default model's embeddings of every `step`-th image of one part, cached by model hash and part (a long
    run keeps the parts it finished)."""
    path = CACHE / f"real-{embedder.content_hash[:16]}-{name}{'' if step == 1 else f'-every{step}'}.npy"
    if path.exists():
        return np.load(path)
    sources = [Source(i, data=data) for i, (_, data) in enumerate(images) if i % step == 0]
    results = [r for batch in embed_batches(embedder, sources, batch_size=64) for r in batch]
    vectors = np.stack([r.vector for r in results if r.vector is not None])
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    print(f"{name}: {len(vectors):,} embeddings", flush=True)
    return vectors


PART_SIZES = {"cifar10-test": 10_000, "cifar10-train": 50_000, "fashion-mnist-test": 10_000,
              "fashion-mnist-train": 60_000, "mnist-test": 10_000, "omniglot-background": 19_280,
              "omniglot-evaluation": 13_180, "photos": 1_500}
PART_CAP = 10_000
"""Images embedded per part at most (every n-th, across its classes): 2 cores embed about 45 small images a
second, so every image of every part (175k) would take over an hour."""


def real_embeddings() -> np.ndarray:
    embedder = Embedder(load_default_model())
    return np.concatenate([part_embeddings(name, images, embedder, -(-PART_SIZES[name] // PART_CAP))
                           for name, images in parts().items()])


def main() -> None:
    vectors = real_embeddings()
    held = np.sort(np.random.default_rng(0).permutation(len(vectors))[:1000])
    keep = np.setdiff1d(np.arange(len(vectors)), held)
    collection, queries = vectors[keep], vectors[held]
    count, dim = collection.shape
    lists = list_count(count)
    kinds = [EXACT, f"IVF{lists},Flat", f"IVF{lists},PQ{dim // 8}"]
    table = kinds_table(f"{count:,} real {dim}-d embeddings (default model), 1000 held-out real queries")
    record = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(REPO),
              "count": count, "dim": dim, "kinds": measure_kinds(collection, queries, kinds, table)}
    Console(width=150).print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
