"""Small JPEG thumbnails of indexed images for the web page, made once and cached by content.

The browser never gets the full file (a 12-MP photo is several MB): a thumbnail at most `SIZE` pixels on its long
side, oriented as the photo is, decoded in the bounded memory indexing decodes in (`bounded_image`), cached in the
index directory under `thumbnails/<sha256>-<size>.jpg`. None is made from a path that no longer holds the file
indexed there: nothing is read from a file that does not match its database, and a cached thumbnail shows the
content the database holds; only a regular file is read as one (a link planted there would serve whatever file it
names). Where the cache cannot be written (a read-only index directory, a full disk), each thumbnail is made anew
for its request, and the user told so once.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path


from retrieval.atomic import atomic_write
from retrieval.errors import DecodeError, IndexNotFoundError, OutputWriteError
from retrieval.index import THUMBNAILS_DIR, SimilarityIndex
from retrieval.sources.file_identity import identify_file
from retrieval.sources.images import DEFAULT_MAX_PIXELS, bounded_image, open_image
from retrieval.unsaved import not_saved

SIZE = 256
FOLDER = THUMBNAILS_DIR
"""The cache's folder in the index directory (`SimilarityIndex.thumbnail_path` names each file)."""
CACHING = "private, no-cache"
"""How a browser may keep an image the server sends, by id: only to check it again first. A file re-indexed under
its id holds other content, and the page must never show an old picture beside an action on the new one."""


def thumbnail(index: SimilarityIndex, image_id: int, size: int = SIZE) -> bytes:
    """The JPEG thumbnail of the indexed image `image_id`, from the cache or made (and cached where it can be);
    `IndexNotFoundError` for an image that is not indexed or whose file changed since, `DecodeError` for one that
    no longer decodes."""
    row = index.image_by_id(image_id)
    if row is None or row.content_hash is None:
        raise IndexNotFoundError(f"no indexed image {image_id}")
    cached = index.thumbnail_path(row.content_hash, size)
    made = _cached(cached)
    if made is not None:
        return made
    identity = identify_file(row.path)
    if identity is None or not identity.is_as_indexed(row.file_id, row.size, row.mtime_ns):
        raise IndexNotFoundError(f"{row.path} no longer holds the image indexed there (run `simsearch index`)")
    try:
        with open_image(Path(row.path)) as image:
            small = bounded_image(image, (size, size), "RGB", DEFAULT_MAX_PIXELS)
            small.thumbnail((size, size))
    except DecodeError:
        raise
    except Exception as exc:  # Pillow raises many kinds on a file that changed under it
        raise DecodeError(f"{row.path}: {exc}") from exc
    jpeg = io.BytesIO()
    small.save(jpeg, format="JPEG", quality=85)
    try:
        _cache(cached, jpeg.getvalue())
    except OutputWriteError as exc:
        not_saved(index.root, "thumbnails are made anew for each request", exc)
    return jpeg.getvalue()


def _cached(path: Path) -> bytes | None:
    """The bytes of the regular file at `path`; None where there is none (nor a link, a FIFO or anything else that
    is no regular file: it is made anew instead, and never followed or waited on)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with open(descriptor, "rb") as handle:
        try:
            return handle.read() if stat.S_ISREG(os.fstat(descriptor).st_mode) else None
        except OSError:
            return None


def _cache(cached: Path, data: bytes) -> None:
    try:
        cached.parent.mkdir(exist_ok=True)
    except OSError as exc:
        raise OutputWriteError(f"cannot make the thumbnail folder {cached.parent}: {exc.strerror or exc}") from exc
    atomic_write(cached, lambda temporary: temporary.write_bytes(data), "thumbnail")
