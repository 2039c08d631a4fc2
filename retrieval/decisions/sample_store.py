"""The samples kept so far, in a folder (`simsearch dedup SHARDS --index DIR`, `--against DIR`): one parquet file,
`samples.parquet`, of each kept sample's key, shard, content hash, size, vector and pixel signature, tagged with
the model that made the vectors. Rewritten whole and atomically (`retrieval.atomic`) after each run that adds to it.

It is a folder of its own, not a `simsearch index` directory: its samples are not files, and `query` or `dedup`
over files do not read it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from retrieval.atomic import atomic_write
from retrieval.decisions.pixel_rule import SIGNATURE_SIDE, PixelSignature
from retrieval.errors import IndexUnavailableError, ModelMismatchError

if TYPE_CHECKING:
    from retrieval.decisions.sample_groups import SeenSamples

FILE_NAME = "samples.parquet"
_MODEL_KEY = b"simsearch.model_hash"


def load_samples(folder: Path, model_hash: str, dim: int, must_exist: bool) -> SeenSamples:
    """The samples kept in `folder` (none if it holds none yet, unless `must_exist`: then `IndexUnavailableError`);
    `ModelMismatchError` when another model made them."""
    import pyarrow.parquet as pq

    from retrieval.decisions.sample_groups import SeenSamples

    path = folder / FILE_NAME
    if not path.is_file():
        if must_exist:
            raise IndexUnavailableError(f"{folder}: no samples kept there ({FILE_NAME}); make it with "
                                        "`simsearch dedup SHARDS --index DIR`")
        return SeenSamples.empty(dim)
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow's own errors say why
        raise IndexUnavailableError(f"{path}: cannot be read ({' '.join(str(exc).split())[:200]})") from exc
    stored = (table.schema.metadata or {}).get(_MODEL_KEY, b"").decode()
    if stored != model_hash:
        raise ModelMismatchError(f"the samples in {folder} were embedded by model {stored[:12] or 'unknown'}, "
                                 f"not {model_hash[:12]}")
    rows = table.to_pydict()
    side = (SIGNATURE_SIDE, SIGNATURE_SIDE, 3)
    vectors = np.asarray(rows["vector"], np.float32).reshape(len(table), dim)
    signatures = [PixelSignature(np.asarray(small, np.float32).reshape(side), float(spread), int(width), int(height))
                  for small, spread, width, height in zip(rows["small"], rows["spread"], rows["width"],
                                                          rows["height"])]
    return SeenSamples(rows["key"], rows["shard"], rows["content_hash"],
                       list(zip(rows["width"], rows["height"])), vectors, signatures)


def stored_keys(folder: Path) -> list[str]:
    """The keys of the samples kept in `folder` (none when it holds none, or cannot be read: `load_samples`
    says why), read without the vectors."""
    import pyarrow.parquet as pq

    try:
        return [str(key) for key in pq.read_table(folder / FILE_NAME, columns=["key"]).column("key").to_pylist()]
    except Exception:  # absent or unreadable: load_samples, which follows, reports it
        return []


def save_samples(folder: Path, samples: SeenSamples, model_hash: str) -> None:
    """Write `samples` to `folder` (made if absent), replacing what it held."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(folder, exist_ok=True)
    table = pa.table({"key": samples.keys, "shard": samples.shards, "content_hash": samples.content_hashes,
                      "width": [w for w, _ in samples.sizes], "height": [h for _, h in samples.sizes],
                      "vector": [row.tolist() for row in samples.vectors],
                      "small": [look.small.astype(np.float32).ravel().tolist() for look in samples.signatures],
                      "spread": [look.spread for look in samples.signatures]})
    table = table.replace_schema_metadata({_MODEL_KEY: model_hash.encode()})
    atomic_write(folder / FILE_NAME, lambda target: pq.write_table(table, target), "kept samples")
