"""Samples read out of shards, one at a time, never unpacked to disk: WebDataset `.tar` files and `.parquet` files
with a column of encoded image bytes.

A WebDataset sample is the run of members that share a key: the member's name up to the first dot of its last
path component (`a/b/000017.jpg` and `a/b/000017.json` are sample `a/b/000017`), as the `webdataset` library
splits them. Its image is its first member whose extension (the last dot's) is an image format `simsearch index`
reads; the other members are not read. Only regular members are read, through the archive itself: a directory,
a symbolic or hard link, a device or a FIFO member is passed over, and a member's name (absolute, `..`) is only
a key: nothing is ever written, nor read outside the shard. A member larger than `MAX_SAMPLE_BYTES` is a failed
sample and is not read. Only uncompressed tar files are read (WebDataset's and img2dataset's shards are).

A parquet shard is read a row group at a time, two columns of it: the key column and the image column (bytes, or
a struct whose `bytes` field holds them, as Hugging Face datasets store images). img2dataset writes the key as
`key` and the image bytes under its encode format's name, `jpg` by default: these are the defaults.

Each sample remembers where it lies (`SampleLocation`), so that its bytes can be read again later
(`read_sample_bytes`) without holding them: dedup reads the pixels of the few images it judges on pixels.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from retrieval.errors import ShardError
from retrieval.sources.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES

MAX_SAMPLE_BYTES = 3 * DEFAULT_MAX_PIXELS
"""The largest image member read: the bytes of the largest image `simsearch index` decodes (its pixel limit) as
8-bit RGB, uncompressed. A member larger than that could not be an image the indexer accepts."""
DEFAULT_IMAGE_COLUMN = "jpg"
DEFAULT_KEY_COLUMN = "key"
SHARD_SUFFIXES = (".tar", ".parquet")
_IMAGE_EXTENSIONS = frozenset(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES)


@dataclass(frozen=True)
class SampleLocation:
    """Where a sample's image bytes lie: a tar member's data (`offset`, `size`) or a parquet row (`row_group`,
    `row` within it)."""

    shard: str
    offset: int = 0
    size: int = 0
    row_group: int = -1
    row: int = -1


@dataclass(frozen=True)
class Sample:
    """One sample of a shard: its key, its image bytes (None when it has none that can be read: then `error` says
    why) and where they lie."""

    key: str
    shard: str
    data: bytes | None
    location: SampleLocation | None = None
    error: str | None = None


@dataclass(frozen=True)
class ShardColumns:
    """The columns of a parquet shard that hold each sample's image bytes and its key."""

    image: str = DEFAULT_IMAGE_COLUMN
    key: str = DEFAULT_KEY_COLUMN


def is_shard(path: Path) -> bool:
    """Whether `path` names a shard by its suffix."""
    return path.suffix.lower() in SHARD_SUFFIXES


def read_shard(path: Path, columns: ShardColumns = ShardColumns(), max_bytes: int = MAX_SAMPLE_BYTES
               ) -> Iterator[Sample]:
    """The samples of the shard at `path`, in order. `ShardError` for a shard that cannot be read (not a tar or
    parquet file, truncated, missing a column), raised when it is met: samples yielded before it stand."""
    if path.suffix.lower() == ".parquet":
        yield from _parquet_samples(path, columns, max_bytes)
    elif path.suffix.lower() == ".tar":
        yield from _tar_samples(path, max_bytes)
    else:
        raise ShardError(f"{path}: not a shard (a .tar or .parquet file)")


def split_member_name(name: str) -> tuple[str, str]:
    """A WebDataset member name as (key, extension): up to and after the first dot of its last component."""
    folder, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (extension if dot else "")


def _is_image(extension: str) -> bool:
    return extension.rpartition(".")[2].lower() in _IMAGE_EXTENSIONS


def _tar_samples(path: Path, max_bytes: int) -> Iterator[Sample]:
    shard = str(path)
    try:
        archive = tarfile.open(path, mode="r:")
    except (OSError, tarfile.TarError) as exc:
        raise ShardError(f"{path}: not a readable tar file ({_reason(exc)})") from exc
    with archive:
        current: str | None = None
        found: Sample | None = None
        try:
            for member in archive:
                key, extension = split_member_name(member.name)
                if key != current:
                    if current is not None:
                        yield found or Sample(current, shard, None, error="no image member")
                    current, found = key, None
                if found is not None or not member.isreg() or not _is_image(extension):
                    continue
                location = SampleLocation(shard, member.offset_data, member.size)
                if member.size > max_bytes:
                    found = Sample(key, shard, None, location, f"image member of {member.size:,} bytes, over the "
                                                               f"limit of {max_bytes:,}")
                    continue
                handle = archive.extractfile(member)
                data = handle.read() if handle is not None else b""
                if len(data) != member.size:
                    raise ShardError(f"{path}: truncated in member {member.name!r}")
                found = Sample(key, shard, data, location)
                archive.members.clear()  # a shard's headers need not be held: each sample is read once, in order
        except (OSError, tarfile.TarError, EOFError) as exc:
            if found is not None:  # a sample whose image was read (or refused) before the damage
                yield found
            raise ShardError(f"{path}: truncated or damaged tar file ({_reason(exc)})") from exc
        if current is not None:
            yield found or Sample(current, shard, None, error="no image member")


def _parquet_file(path: Path):  # type: ignore[no-untyped-def]
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # pyarrow's errors (ArrowInvalid, OSError) say why in their own words
        raise ShardError(f"{path}: not a readable parquet file ({_reason(exc)})") from exc


def _parquet_samples(path: Path, columns: ShardColumns, max_bytes: int) -> Iterator[Sample]:
    shard = str(path)
    parquet = _parquet_file(path)
    names = parquet.schema_arrow.names
    for column in (columns.key, columns.image):
        if column not in names:
            raise ShardError(f"{path}: no column {column!r} (columns: {', '.join(names)}); name the key and "
                             "image columns with --key-column and --image-column")
    for group in range(parquet.num_row_groups):
        try:
            table = parquet.read_row_group(group, columns=[columns.key, columns.image])
        except Exception as exc:
            raise ShardError(f"{path}: row group {group} cannot be read ({_reason(exc)})") from exc
        keys = table.column(columns.key).to_pylist()
        images = table.column(columns.image)
        for row, key in enumerate(keys):
            location = SampleLocation(shard, row_group=group, row=row)
            data = _image_bytes(images[row].as_py())
            if key is None:
                yield Sample(f"{path.name}:{group}:{row}", shard, None, location, "no key")
            elif data is None:
                yield Sample(str(key), shard, None, location, "no image bytes")
            elif len(data) > max_bytes:
                yield Sample(str(key), shard, None, location,
                             f"image of {len(data):,} bytes, over the limit of {max_bytes:,}")
            else:
                yield Sample(str(key), shard, data, location)


def _image_bytes(value: object) -> bytes | None:
    """A parquet image value's bytes: the value itself, or a struct's `bytes` field."""
    if isinstance(value, dict):
        value = value.get("bytes")
    return bytes(value) if isinstance(value, (bytes, bytearray)) and value else None


def read_sample_bytes(location: SampleLocation, columns: ShardColumns = ShardColumns()) -> bytes | None:
    """The image bytes at `location` read again, or None where they can no longer be read as they were."""
    try:
        if location.row_group < 0:
            with open(location.shard, "rb") as handle:
                handle.seek(location.offset)
                data = handle.read(location.size)
            return data if len(data) == location.size else None
        table = _parquet_file(Path(location.shard)).read_row_group(location.row_group, columns=[columns.image])
        return _image_bytes(table.column(columns.image)[location.row].as_py())
    except (OSError, ShardError, IndexError):
        return None


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__
