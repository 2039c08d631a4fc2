"""Embeddings out of an index and into one, without decoding an image.

Two layouts, both tagged with the model that made the vectors (its content hash: an index takes only its own
model's vectors):

- one Parquet file: a row per indexed image (path, image id, label, width, height, size, mtime, content hash)
  and its vector (a fixed-size list of float32);
- clip-retrieval's folder: `embeddings/img_emb_<n>.npy` float32 shards beside `metadata/metadata_<n>.parquet`
  shards holding the same rows in the same order, without the vectors.

This is also how a distributed embedding job hands its shards over.

An import reads its files twice, a batch of rows at a time (`WRITE_ROWS`), so it holds about one batch however
large the files: first to check them whole (the tags and rows by `retrieval.sources.imported_rows`, an .npy header
against its metadata and its size before anything is read), then to write them. An npy export replaces an earlier one
whole, so no shard of it is left to be imported twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.atomic import atomic_write
from retrieval.errors import IndexNotFoundError, InputPathError, ModelMismatchError, OutputWriteError
from retrieval.index import SimilarityIndex
from retrieval.sources.imported_rows import ModelTag, RowChecker, check_columns, model_tag
from retrieval.store.records import ImageChange, ModelInfo

FORMATS = ("parquet", "npy")
META_KEY = b"simsearch"
COLUMNS = ("path", "image_id", "label", "width", "height", "size", "mtime_ns", "content_hash")
SHARD_ROWS = 1_000_000
WRITE_ROWS = 5000
GROUP_BYTES = 32 * 2**20
"""The most vector bytes in a row group of a Parquet file simsearch writes, for readers that decode a group at a
time."""
READ_BUFFER = 2**20
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
    for record in index.export_rows():
        row = row_of.get(int(record["vector_id"]))  # type: ignore[arg-type]
        if row is not None:
            metadata.append({column: record[column] for column in COLUMNS})
            rows.append(row)
    return Embeddings(model.content_hash, model.name, metadata, vectors[np.array(rows, dtype=np.int64)]
                      if rows else np.empty((0, model.embedding_dim), np.float32))


def export_embeddings(index: SimilarityIndex, out: Path, layout: str = "parquet") -> tuple[int, list[Path]]:
    """Write the index's images and vectors to `out` (a file for "parquet", a folder for "npy"); (rows, files)."""
    if layout not in FORMATS:
        raise InputPathError(f"--format must be one of {', '.join(FORMATS)}, not {layout!r}")
    found = _exported(index)
    if layout == "parquet":
        write_parquet(out, found)
        return len(found.metadata), [out]
    return len(found.metadata), _export_folder(out, found)


SHARD_NAMES = {folder: re.compile(rf"{stem}\d+{suffix}|\.{stem}\d+{suffix}\.\d+\.tmp")
               for folder, stem, suffix in (("embeddings", "img_emb_", r"\.npy"),
                                            ("metadata", "metadata_", r"\.parquet"))}
"""The files an npy export writes in each of its folders (and `atomic_write`'s temporaries of them)."""


def _export_folder(out: Path, found: Embeddings) -> list[Path]:
    """clip-retrieval's folder at `out`, made aside and renamed into place: an earlier export there is replaced
    whole (none of its shards is left for an import to count again), and a folder holding anything else is
    refused, never written into. A crash leaves the earlier export, or the new one, and a hidden folder beside."""
    target = Path(os.path.realpath(out))  # through a link to a folder: the folder is what is replaced
    earlier = _earlier_export(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        built = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".export", dir=target.parent))
    except OSError as exc:
        raise OutputWriteError(f"cannot write the export {out}: {exc.strerror or exc}") from exc
    try:
        written = _write_shards(built, found)
        _replace(target, built, earlier)
    except OSError as exc:
        raise OutputWriteError(f"cannot write the export {out}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(built, ignore_errors=True)  # gone already once it is in place
    return [out / path.relative_to(built) for path in written]


def _earlier_export(out: Path) -> list[Path]:
    """The files of the earlier npy export at `out` (none where there is no folder, or an empty one);
    `InputPathError` for a file, or a folder that holds anything else."""
    if not out.exists():
        return []
    if not out.is_dir():
        raise InputPathError(f"{out} is a file: --format npy writes a folder")
    files = []
    for folder in out.iterdir():
        names = SHARD_NAMES.get(folder.name)
        if names is None or folder.is_symlink() or not folder.is_dir():
            raise _not_an_export(out, folder)
        for file in folder.iterdir():
            if not names.fullmatch(file.name) or file.is_symlink() or not file.is_file():
                raise _not_an_export(out, file)
            files.append(file)
    return files


def _not_an_export(out: Path, found: Path) -> InputPathError:
    return InputPathError(f"{out} holds {found.relative_to(out)}, which no export wrote: export into a new or empty "
                          "folder, or one an earlier `export --format npy` made")


def _write_shards(folder: Path, found: Embeddings) -> list[Path]:
    """The shards of `found` in `folder` (empty): vectors beside metadata, `SHARD_ROWS` rows each."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = found.vectors.shape[1]
    group = _group_rows(dim)
    table = pa.Table.from_pylist(found.metadata, schema=_schema()).replace_schema_metadata(
        _tag(found.model_hash, found.model_name, dim))
    for name in SHARD_NAMES:
        (folder / name).mkdir()
    written = []
    for number, start in enumerate(range(0, max(1, len(found.metadata)), SHARD_ROWS)):
        shard = table.slice(start, SHARD_ROWS)
        vectors_path = folder / "embeddings" / f"img_emb_{number:04d}.npy"
        metadata_path = folder / "metadata" / f"metadata_{number:04d}.parquet"
        atomic_write(vectors_path, lambda temporary, s=start: _save_npy(temporary, found.vectors[s:s + SHARD_ROWS]),
                     "embeddings shard")
        atomic_write(metadata_path, lambda temporary, t=shard: pq.write_table(t, temporary, row_group_size=group),
                     "metadata shard")
        written += [vectors_path, metadata_path]
    return written


def _replace(out: Path, built: Path, earlier: list[Path]) -> None:
    """Put the folder `built` at `out`, where the files `earlier` of an earlier export (or nothing) are: that
    folder is renamed aside, `built` takes its name, and then only the files `earlier` names are deleted (one
    that appeared meanwhile stays, in the folder set aside)."""
    if not out.exists():
        built.rename(out)
        return
    aside = built.with_suffix(".old")
    out.rename(aside)
    try:
        built.rename(out)
    except OSError:
        aside.rename(out)
        raise
    for file in earlier:
        (aside / file.relative_to(out)).unlink()
    for folder in [*(aside / name for name in SHARD_NAMES), aside]:
        with contextlib.suppress(OSError):  # not empty: what we did not write stays
            folder.rmdir()


def write_parquet(out: Path, found: Embeddings) -> None:
    """One Parquet file of rows and vectors, tagged with their model (what `EmbeddingsReader` reads): an export, or
    a shard a distributed embedding job hands over."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = found.vectors.shape[1]
    tag = _tag(found.model_hash, found.model_name, dim)
    table = pa.Table.from_pylist(found.metadata, schema=_schema())
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(found.vectors.reshape(-1), pa.float32()), dim)
    table = table.append_column("vector", vectors).replace_schema_metadata(tag)
    atomic_write(out, lambda temporary: pq.write_table(table, temporary, row_group_size=_group_rows(dim)),
                 "embeddings file")


def _group_rows(dim: int) -> int:
    """Rows in a row group of a file of vectors of `dim` (`GROUP_BYTES` of them; a metadata shard's groups match
    its vectors' blocks)."""
    return max(1, GROUP_BYTES // (4 * dim))


def _save_npy(path: Path, vectors: np.ndarray) -> None:
    with path.open("wb") as handle:
        np.save(handle, np.ascontiguousarray(vectors, dtype=np.float32))


def _schema():  # type: ignore[no-untyped-def]
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("image_id", pa.int64()), ("label", pa.string()),
                      ("width", pa.int64()), ("height", pa.int64()), ("size", pa.int64()),
                      ("mtime_ns", pa.int64()), ("content_hash", pa.string())])


class EmbeddingsReader:
    """The rows and vectors of embeddings files (Parquet files with vectors, or clip-retrieval folders), `WRITE_ROWS`
    at a time, each batch checked before it is given: one model, one dimension, every row as
    `retrieval.sources.imported_rows` requires (no path twice among all the files), every vector finite and of unit
    length. `InputPathError` naming the file (and row) and what is wrong, at the first problem, so a pass to the end
    checks the files whole; `tag` is then the model that made them. Each pass reads the files again."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = paths
        self.tag: ModelTag | None = None

    def __iter__(self) -> Iterator[Embeddings]:
        rows = RowChecker()
        for path in self.paths:
            for file in _files(path):
                self._check_tag(file.where, file.tag)
                for first_row, metadata, vectors in file.batches():
                    rows.check(file.where, metadata, first_row)
                    _check_vectors(file.where, vectors, first_row)
                    yield Embeddings(file.tag.model_hash, file.tag.model_name, metadata, vectors)
        if self.tag is None:
            raise InputPathError("no embeddings given")

    def check(self) -> ModelTag:
        """One pass to the end, checking the files whole; the model that made them."""
        for _ in self:
            pass
        assert self.tag is not None  # a pass without one raises
        return self.tag

    def _check_tag(self, where: Path, tag: ModelTag) -> None:
        """`tag` is the first file's, or `InputPathError`."""
        first = self.tag = self.tag or tag
        if tag.model_hash != first.model_hash:
            raise InputPathError(f"{where}: made by model {tag.model_hash[:12]} ({tag.model_name}), the files "
                                 f"before it by {first.model_hash[:12]} ({first.model_name}); import one model's at "
                                 "a time")
        if tag.dim != first.dim:
            raise InputPathError(f"{where}: vectors of {tag.dim} dimensions, the files before it {first.dim}")


@dataclass(frozen=True)
class _NpyVectors:
    """The vectors of an .npy file whose header was checked, read a block of rows at a time."""

    path: Path
    offset: int
    shape: tuple[int, int]
    dtype: np.dtype
    fortran_order: bool

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows `start` to `stop` as float32. The file is mapped only while they are copied out, so no more of it
        than those rows' pages is ever resident."""
        mapped = np.memmap(self.path, self.dtype, "r", self.offset, self.shape, "F" if self.fortran_order else "C")
        return np.array(mapped[start:stop], dtype=np.float32)


@dataclass(frozen=True)
class _EmbeddingsFile:
    """One Parquet file of an import, its tag read and its columns checked: its rows (and their vectors, in its
    `vector` column or in the .npy file `npy`) are read a batch at a time."""

    where: Path
    tag: ModelTag
    parquet: Any  # pyarrow.parquet.ParquetFile
    npy: _NpyVectors | None

    def batches(self) -> Iterator[tuple[int, list[dict[str, object]], np.ndarray]]:
        """(number of the first row, counted from 1; rows; their vectors), `WRITE_ROWS` rows at most each, read as
        they are given (the Parquet file as a stream, `_parquet`; the .npy file a block of rows at a time)."""
        read = 0
        with _reading(self.where):
            for batch in self.parquet.iter_batches(batch_size=WRITE_ROWS, use_threads=False):
                if self.npy is None:
                    vectors = _column_vectors(batch.column("vector"), self.tag.dim)
                    batch = batch.drop_columns(["vector"])
                else:
                    vectors = self.npy.rows(read, read + batch.num_rows)
                yield read + 1, batch.to_pylist(), vectors
                read += batch.num_rows


def _files(path: Path) -> Iterator[_EmbeddingsFile]:
    """The Parquet file at `path`, or each metadata shard of the clip-retrieval folder at `path` with its vectors."""
    import pyarrow as pa

    with _reading(path):
        if path.is_dir():
            shards = sorted((path / "metadata").glob("metadata_*.parquet"))
            if not shards:
                raise InputPathError(f"{path}: no metadata/metadata_*.parquet shards (clip-retrieval's layout)")
            for shard in shards:
                vectors_path = path / "embeddings" / shard.name.replace("metadata_", "img_emb_").replace(
                    ".parquet", ".npy")
                if not vectors_path.is_file():
                    raise InputPathError(f"{shard}: its vectors {vectors_path.name} are missing")
                parquet, tag = _parquet(shard)
                yield _EmbeddingsFile(shard, tag, parquet, _npy_vectors(vectors_path, parquet.metadata.num_rows,
                                                                        tag.dim))
        elif path.is_file():
            parquet, tag = _parquet(path)
            if "vector" not in parquet.schema_arrow.names:
                raise InputPathError(f"{path}: no vector column (a metadata shard goes with its folder)")
            vector_type = parquet.schema_arrow.field("vector").type
            if not isinstance(vector_type, pa.FixedSizeListType):
                raise InputPathError(f"{path}: the vector column is not a fixed-size list of floats")
            if vector_type.list_size != tag.dim:
                raise InputPathError(f"{path}: vectors of {vector_type.list_size} dimensions (the tag says "
                                     f"{tag.dim} dimensions)")
            yield _EmbeddingsFile(path, tag, parquet, None)
        else:
            raise InputPathError(f"no such file or directory: {path}")


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Arrow's, the system's and numpy's errors while `path` is read, as an `InputPathError` naming it."""
    import pyarrow as pa

    try:
        yield
    except InputPathError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputPathError(f"{path}: not a readable embeddings file ({str(exc).splitlines()[0]})") from exc


def _parquet(path: Path):  # type: ignore[no-untyped-def]
    """The Parquet file at `path`, opened (nothing but its footer read), and its model tag; its columns checked.
    It is read as a stream through a buffer of `READ_BUFFER` bytes, not a row group's column chunks at a time (and
    a whole file's ahead of them, as Arrow's `pre_buffer` does), and by one thread (each keeps memory of its own),
    so a batch is about all that is held of it even where a row group is large."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER)
    raw = (parquet.schema_arrow.metadata or {}).get(META_KEY)
    if raw is None:
        raise InputPathError(f"{path}: no simsearch model tag: not exported by simsearch, or made without one")
    check_columns(parquet.schema_arrow.names, path)
    return parquet, model_tag(raw, path)


def _column_vectors(column, dim: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """A batch's vector column (fixed-size lists of `dim`) as float32 rows."""
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat.reshape(len(column), dim), dtype=np.float32)


def _npy_vectors(path: Path, rows: int, dim: int) -> _NpyVectors:
    """The float vectors of the .npy file `path`, which must be `rows` x `dim` as its metadata shard and tag say.
    Its header is read and checked against those and against the file's size before anything is read: a header
    may declare any shape (10,000,000 x 1280 is 47.7 GiB), and the file's size bounds what is read."""
    from numpy.lib import format as npy

    with path.open("rb") as handle:
        version = npy.read_magic(handle)
        if version not in ((1, 0), (2, 0)):
            raise InputPathError(f"{path}: a .npy file of version {version[0]}.{version[1]} (1.0 or 2.0 are read)")
        read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, fortran_order, dtype = read_header(handle)
        if dtype.kind != "f" or dtype.hasobject:
            raise InputPathError(f"{path}: vectors of type {dtype}, not floats")
        if shape != (rows, dim):
            raise InputPathError(f"{path}: declares vectors of shape {shape}, but its metadata shard has {rows} rows "
                                 f"and the tag says {dim} dimensions")
        offset = handle.tell()
        data_bytes = os.fstat(handle.fileno()).st_size - offset
        if data_bytes != rows * dim * dtype.itemsize:
            raise InputPathError(f"{path}: holds {data_bytes} bytes of vectors, its header declares "
                                 f"{rows * dim * dtype.itemsize}")
    return _NpyVectors(path, offset, (rows, dim), dtype, fortran_order)


def _check_vectors(where: Path, vectors: np.ndarray, first_row: int) -> None:
    """`InputPathError` naming the first of `vectors` (rows of `where` from `first_row`) that is not finite and of
    unit length."""
    norms = np.linalg.norm(vectors, axis=1)
    bad = np.flatnonzero(~(np.abs(norms - 1) <= NORM_TOLERANCE))  # a NaN norm too
    if bad.size:
        raise InputPathError(f"{where}: row {first_row + int(bad[0])}: a vector that is not finite and of unit length "
                             f"(its norm is {norms[bad[0]]:.4g})")


def import_embeddings(index: SimilarityIndex, paths: Sequence[Path]) -> int:
    """Add the images and vectors of these files to the index (the rows at their paths, if any, take them). The
    files are read twice, a batch at a time: first checked whole, so a bad file leaves the index as it was, then
    written, `WRITE_ROWS` rows a transaction. The files must be of the index's model."""
    reader = EmbeddingsReader(paths)
    model = _receiving_model(index, reader.check())
    written = 0
    with index.writer():
        try:
            for batch in reader:
                new_vectors = [(str(row["content_hash"]), vector.tobytes())
                               for row, vector in zip(batch.metadata, batch.vectors)]
                index.write_images(model.id, [_change(row) for row in batch.metadata], new_vectors)
                written += len(batch.metadata)
        except InputPathError as exc:
            raise InputPathError(f"{exc} (the files changed after they were checked: {written} of their rows were "
                                 "imported)") from exc
    return written


def _receiving_model(index: SimilarityIndex, tag: ModelTag) -> ModelInfo:
    """The index's model, which must be the one `tag` names (served first if the index serves none yet and holds
    it); else `IndexNotFoundError`, `ModelMismatchError` or `InputPathError`."""
    model = index.served_model()
    if model is None:
        record = index.model_by_hash(tag.model_hash)
        if record is None or not index.holds_model(tag.model_hash):
            raise IndexNotFoundError(f"the index at {index.root} serves no model yet and does not hold model "
                                     f"{tag.model_hash[:12]} ({tag.model_name}): index one image with it first "
                                     "(`simsearch index PATH --model FILE`)")
        model = index.serve_first_model(record.id)
    if model.content_hash != tag.model_hash:
        raise ModelMismatchError.between(index.root, (model.name, model.content_hash),
                                         (tag.model_name, tag.model_hash),
                                         "import embeddings made by the index's own model")
    if tag.dim != model.embedding_dim:
        raise InputPathError(f"the vectors have {tag.dim} dimensions, the index's model {model.embedding_dim}")
    return model


def _change(row: dict[str, Any]) -> ImageChange:
    """The image row for a row `EmbeddingsReader` checked. It has no device and inode (`file_id`): those of another
    machine's file mean nothing here, and a row's path is no proof of its file, so dedup takes the row for the
    file at its path only once `simsearch index` has seen it (`FileIdentity.is_as_indexed`)."""
    return ImageChange.indexed(row["path"], size=row["size"], mtime_ns=row["mtime_ns"], label=row.get("label"),
                       content_hash=row["content_hash"], width=row.get("width"), height=row.get("height"),
                       vector_hash=row["content_hash"])
