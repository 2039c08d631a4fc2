"""The vector index's kinds on real embeddings: the default model's 1280-d vectors of real images from
../shared/datasets (CIFAR-10 test, Fashion-MNIST test, MNIST test, every photo), beside exact Flat.

Synthetic clusters (`vector_scale.py`) say how the index scales; these say how it behaves on the distribution
users have. The collection is every image but 1000 held out as queries (drawn at random). For each kind: build
time, memory, the nprobe tuned for recall@10 >= 0.95 on the collection's own held-out queries, recall@1 and
recall@10 of the held-out queries against exact, single-query and batched ms a query. Embeddings are cached
under benchmarks/.cache/embeddings (by model hash). Results are appended to `benchmarks/results/vector_real.jsonl`.

    python benchmarks/vector_real.py
"""

from __future__ import annotations

import hashlib
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
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from benchmarks.index_throughput import git_commit  # noqa: E402
from benchmarks.vector_scale import measure_kinds  # noqa: E402
from idx_files import read_idx  # noqa: E402
from retrieval.datasets.locate import datasets_root  # noqa: E402
from retrieval.embedding import Embedder  # noqa: E402
from retrieval.faiss_factory import EXACT, list_count  # noqa: E402
from retrieval.model import load_default_model  # noqa: E402
from retrieval.sources.decode import Source  # noqa: E402
from retrieval.sources.embed import embed_batches  # noqa: E402

DATASETS = datasets_root()
CACHE = REPO / "benchmarks" / ".cache" / "embeddings"
RESULTS = REPO / "benchmarks" / "results" / "vector_real.jsonl"
SUFFIXES = {".jpg", ".jpeg", ".png"}


def encoded_images() -> Iterator[tuple[str, bytes]]:
    """(name, encoded image) of every image the collection takes, in a fixed order."""
    with zipfile.ZipFile(DATASETS / "cifar10" / "cifar10-test.zip") as archive:
        for name in sorted(n for n in archive.namelist() if n.lower().endswith(".jpg")):
            yield f"cifar10/{name}", archive.read(name)
    for folder in ("fashion-mnist", "mnist"):
        for i, pixels in enumerate(read_idx(DATASETS / folder / "t10k-images-idx3-ubyte.gz")):
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            yield f"{folder}/{i:05d}.png", buffer.getvalue()
    for path in sorted(p for p in (DATASETS / "photos").rglob("*") if p.suffix.lower() in SUFFIXES):
        yield str(path.relative_to(DATASETS)), path.read_bytes()


def real_embeddings() -> tuple[list[str], np.ndarray]:
    model = load_default_model()
    images = list(encoded_images())
    names = [name for name, _ in images]
    key = hashlib.sha256((model.content_hash + "\n".join(names)).encode()).hexdigest()[:20]
    path = CACHE / f"real-{key}.npy"
    if path.exists():
        return names, np.load(path)
    sources = [Source(i, data=data) for i, (_, data) in enumerate(images)]
    results = [r for batch in embed_batches(Embedder(model), sources, batch_size=64) for r in batch]
    kept = [r for r in results if r.vector is not None]
    vectors = np.stack([r.vector for r in kept])
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return [names[r.key] for r in kept], vectors


def main() -> None:
    names, vectors = real_embeddings()
    held = np.sort(np.random.default_rng(0).permutation(len(vectors))[:1000])
    keep = np.setdiff1d(np.arange(len(vectors)), held)
    collection, queries = vectors[keep], vectors[held]
    count, dim = collection.shape
    lists = list_count(count)
    kinds = [EXACT, f"IVF{lists},Flat", f"IVF{lists},PQ{dim // 8}"]
    table = Table(title=f"{count:,} real {dim}-d embeddings (default model), 1000 held-out real queries")
    record = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(REPO),
              "count": count, "dim": dim, "kinds": measure_kinds(collection, queries, kinds, table)}
    Console(width=150).print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
