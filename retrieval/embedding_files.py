"""Embeddings out of an index and into one, without decoding an image.

Two layouts, both tagged with the model that made the vectors (its content hash: an index takes only its own
model's vectors):

- one Parquet file: a row per indexed image (path, image id, label, width, height, size, mtime, content hash)
  and its vector (a fixed-size list of float32);
- clip-retrieval's folder: `embeddings/img_emb_<n>.npy` float32 shards beside `metadata/metadata_<n>.parquet`
  shards holding the same rows in the same order, without the vectors.

This is also how a distributed embedding job hands its shards over.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.atomic import atomic_write
from retrieval.errors import IndexNotFoundError, InputPathError, ModelMismatchError
from retrieval.index import SimilarityIndex
from retrieval.store.index_store import ImageChange
from retrieval.store.schema import STATUS_OK

FORMATS = ("parquet", "npy")
META_KEY = b"simsearch"
COLUMNS = ("path", "image_id", "label", "width", "height", "size", "mtime_ns", "content_hash")
SHARD_ROWS = 1_000_000
WRITE_ROWS = 5000
NORM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Embeddings:
    """Rows of image metadata (`COLUMNS`) with their L2-normalised vectors, and the model that made them."""

    model_hash: str
    model_name: str
    metadata: list[dict[str, object]]
    vectors: np.ndarray


def _tag(model_hash: str, model_name: str, dim: int) -> dict[bytes, bytes]:
    return {META_KEY: json.dumps({"model_hash": model_hash, "model_name": model_name, "dim": dim,
                                  "format": 1}).encode()}


def _exported(index: SimilarityIndex) -> Embeddings:
    model = index.served_model()
    if model is None:
        raise IndexNotFoundError(f"the index at {index.root} holds no images yet: nothing to export")
    ids, vectors = index.served_vectors()
    row_of = {int(vector_id): row for row, vector_id in enumerate(ids)}
    metadata, rows = [], []
    for record in index.store.export_rows():
        row = row_of.get(int(record["vector_id"]))  # type: ignore[arg-type]
        if row is not None:
            metadata.append({column: record[column] for column in COLUMNS})
            rows.append(row)
    return Embeddings(model.content_hash, model.name, metadata, vectors[np.array(rows, dtype=np.int64)]
                      if rows else np.empty((0, model.embedding_dim), np.float32))


def export_embeddings(index: SimilarityIndex, out: Path, layout: str = "parquet") -> tuple[int, list[Path]]:
    """Write the index's images and vectors to `out` (a file for "parquet", a folder for "npy"); (rows, files)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if layout not in FORMATS:
        raise InputPathError(f"--format must be one of {', '.join(FORMATS)}, not {layout!r}")
    found = _exported(index)
    if layout == "parquet":
        write_parquet(out, found)
        return len(found.metadata), [out]
    dim = found.vectors.shape[1]
    table = pa.Table.from_pylist(found.metadata, schema=_schema()).replace_schema_metadata(
        _tag(found.model_hash, found.model_name, dim))
    written = []
    for number, start in enumerate(range(0, max(1, len(found.metadata)), SHARD_ROWS)):
        shard = table.slice(start, SHARD_ROWS)
        vectors_path = out / "embeddings" / f"img_emb_{number:04d}.npy"
        metadata_path = out / "metadata" / f"metadata_{number:04d}.parquet"
        for path in (vectors_path, metadata_path):
            path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(vectors_path, lambda temporary, s=start: _save_npy(temporary, found.vectors[s:s + SHARD_ROWS]),
                     "embeddings shard")
        atomic_write(metadata_path, lambda temporary, t=shard: pq.write_table(t, temporary), "metadata shard")
        written += [vectors_path, metadata_path]
    return len(found.metadata), written


def write_parquet(out: Path, found: Embeddings) -> None:
    """One Parquet file of rows and vectors, tagged with their model (what `read_embeddings` reads): an export, or
    a shard a distributed embedding job hands over."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = found.vectors.shape[1]
    tag = _tag(found.model_hash, found.model_name, dim)
    table = pa.Table.from_pylist(found.metadata, schema=_schema())
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(found.vectors.reshape(-1), pa.float32()), dim)
    table = table.append_column("vector", vectors).replace_schema_metadata(tag)
    atomic_write(out, lambda temporary: pq.write_table(table, temporary), "embeddings file")


def _save_npy(path: Path, vectors: np.ndarray) -> None:
    with path.open("wb") as handle:
        np.save(handle, np.ascontiguousarray(vectors, dtype=np.float32))


def _schema():  # type: ignore[no-untyped-def]
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("image_id", pa.int64()), ("label", pa.string()),
                      ("width", pa.int64()), ("height", pa.int64()), ("size", pa.int64()),
                      ("mtime_ns", pa.int64()), ("content_hash", pa.string())])


def read_embeddings(paths: Sequence[Path]) -> Embeddings:
    """Everything in these files (Parquet files with vectors, or clip-retrieval folders), checked whole: one
    model, one dimension, every row with a path and a content hash, every vector finite and of unit length.
    `InputPathError` naming the file and what is wrong."""
    parts = [part for path in paths for part in _read(path)]
    if not parts:
        raise InputPathError("no embeddings given")
    hashes = {part.model_hash for part in parts}
    if len(hashes) > 1:
        raise InputPathError(f"the files were made by {len(hashes)} different models; import one model's at a time")
    dims = {part.vectors.shape[1] for part in parts}
    if len(dims) > 1:
        raise InputPathError(f"the files hold vectors of {len(dims)} different dimensions: {sorted(dims)}")
    return Embeddings(parts[0].model_hash, parts[0].model_name, [row for part in parts for row in part.metadata],
                      np.concatenate([part.vectors for part in parts]))


def _read(path: Path) -> Iterator[Embeddings]:
    import pyarrow as pa

    try:
        if path.is_dir():
            shards = sorted((path / "metadata").glob("metadata_*.parquet"))
            if not shards:
                raise InputPathError(f"{path}: no metadata/metadata_*.parquet shards (clip-retrieval's layout)")
            for shard in shards:
                vectors_path = path / "embeddings" / shard.name.replace("metadata_", "img_emb_").replace(
                    ".parquet", ".npy")
                if not vectors_path.is_file():
                    raise InputPathError(f"{shard}: its vectors {vectors_path.name} are missing")
                yield _checked(shard, *_table(shard), np.load(vectors_path, allow_pickle=False))
        elif path.is_file():
            table, tag = _table(path)
            if "vector" not in table.column_names:
                raise InputPathError(f"{path}: no vector column (a metadata shard goes with its folder)")
            column = table.column("vector").combine_chunks()
            if not isinstance(column, pa.FixedSizeListArray):
                raise InputPathError(f"{path}: the vector column is not a fixed-size list of floats")
            vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(len(table), column.type.list_size)
            yield _checked(path, table.drop_columns(["vector"]), tag, vectors)
        else:
            raise InputPathError(f"no such file or directory: {path}")
    except (pa.ArrowException, OSError, ValueError) as exc:
        if isinstance(exc, InputPathError):
            raise
        raise InputPathError(f"{path}: not a readable embeddings file ({str(exc).splitlines()[0]})") from exc


def _table(path: Path):  # type: ignore[no-untyped-def]
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise InputPathError(f"{path}: no simsearch model tag: not exported by simsearch, or made without one")
    tag = json.loads(raw)
    return table, tag


def _checked(path: Path, table, tag: dict[str, object], vectors: np.ndarray) -> Embeddings:  # type: ignore[no-untyped-def]
    missing = [column for column in ("path", "content_hash") if column not in table.column_names]
    if missing:
        raise InputPathError(f"{path}: no {missing[0]} column")
    if vectors.ndim != 2 or len(vectors) != len(table) or vectors.shape[1] != tag.get("dim"):
        raise InputPathError(f"{path}: {len(table)} rows but vectors of shape {vectors.shape} (the tag says "
                             f"{tag.get('dim')} dimensions)")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1)
    if not np.isfinite(vectors).all() or (len(norms) and np.abs(norms - 1).max() > NORM_TOLERANCE):
        raise InputPathError(f"{path}: vectors that are not finite and of unit length")
    rows = table.to_pylist()
    if any(not row.get("path") or not row.get("content_hash") for row in rows):
        raise InputPathError(f"{path}: a row without a path or content hash")
    return Embeddings(str(tag["model_hash"]), str(tag.get("model_name", "")), rows, vectors)


def import_embeddings(index: SimilarityIndex, paths: Sequence[Path]) -> int:
    """Add the images and vectors of these files to the index (the rows at their paths, if any, take them);
    checked whole first, so a bad file leaves the index as it was. The files must be of the index's model."""
    found = read_embeddings(paths)
    model = index.served_model()
    if model is None:
        record = index.store.model_row(found.model_hash)
        if record is None or not index.model_path(found.model_hash).is_file():
            raise IndexNotFoundError(f"the index at {index.root} serves no model yet and does not hold model "
                                     f"{found.model_hash[:12]} ({found.model_name}): index one image with it first "
                                     "(`simsearch index PATH --model FILE`)")
        model = index.store.serve_first_model(record.id)
    if model.content_hash != found.model_hash:
        raise ModelMismatchError.between(index.root, (model.name, model.content_hash),
                                         (found.model_name, found.model_hash),
                                         "import embeddings made by the index's own model")
    if found.vectors.shape[1] != model.embedding_dim:
        raise InputPathError(f"the vectors have {found.vectors.shape[1]} dimensions, the index's model "
                             f"{model.embedding_dim}")
    with index.store.writer():
        for start in range(0, len(found.metadata), WRITE_ROWS):
            rows = found.metadata[start:start + WRITE_ROWS]
            vectors = found.vectors[start:start + WRITE_ROWS]
            changes = [ImageChange(str(row["path"]), STATUS_OK, size=_int(row.get("size")),
                                   mtime_ns=_int(row.get("mtime_ns")), label=row.get("label"),  # type: ignore[arg-type]
                                   content_hash=str(row["content_hash"]), width=_int(row.get("width")),
                                   height=_int(row.get("height")), vector_hash=str(row["content_hash"]))
                       for row in rows]
            index.store.write_images(model.id, changes, [(str(row["content_hash"]), vector.tobytes())
                                                         for row, vector in zip(rows, vectors)])
    return len(found.metadata)


def _int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]
