"""Small JPEG thumbnails of indexed images for the web page, made once and cached by content.

The browser never gets the full file (a 12-MP photo is several MB): a thumbnail at most `SIZE` pixels on its long
side, oriented as the photo is, cached in the index directory under `thumbnails/<sha256>-<size>.jpg`. None is made
from a path that no longer holds the file indexed there: nothing is read from a file that does not match its
database, and a cached thumbnail shows the content the database holds.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps

from retrieval.atomic import atomic_write
from retrieval.errors import DecodeError, IndexNotFoundError
from retrieval.file_identity import identify_file
from retrieval.index import SimilarityIndex

SIZE = 256
FOLDER = "thumbnails"


def thumbnail(index: SimilarityIndex, image_id: int, size: int = SIZE) -> Path:
    """The cached thumbnail of the indexed image `image_id`; `IndexNotFoundError` for an image that is not
    indexed or whose file changed since, `DecodeError` for one that no longer decodes."""
    row = index.store.image_by_id(image_id)
    if row is None or row.content_hash is None:
        raise IndexNotFoundError(f"no indexed image {image_id}")
    cached = index.root / FOLDER / f"{row.content_hash}-{size}.jpg"
    if cached.is_file():
        return cached
    identity = identify_file(row.path)
    if identity is None or not identity.is_as_indexed(row.file_id, row.size, row.mtime_ns):
        raise IndexNotFoundError(f"{row.path} no longer holds the image indexed there (run `simsearch index`)")
    try:
        with Image.open(row.path) as image:
            image.draft("RGB", (size, size))
            small = ImageOps.exif_transpose(image).convert("RGB")
            small.thumbnail((size, size))
    except Exception as exc:  # Pillow raises many kinds on a file that changed under it
        raise DecodeError(f"{row.path}: {exc}") from exc
    cached.parent.mkdir(exist_ok=True)
    atomic_write(cached, lambda temporary: small.save(temporary, format="JPEG", quality=85), "thumbnail")
    return cached
