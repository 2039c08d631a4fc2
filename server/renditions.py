"""The full view of an indexed image for the review page's compare and zoom: a JPEG at most `SIZE` pixels on its
long side (a 24-MP photo arrives as about 0.5 MB, and no decode takes more memory than indexing's), by image id.

Made as thumbnails are (`server.thumbnails`: decoded by `bounded_image`, oriented, cached by content in the index
directory's `thumbnails/`), and asked for as they are: with the header `X-Simsearch-Request` (no `<img>` of another
site can load it) and, with a token, `Authorization`. Unlike a thumbnail, a cached rendition is not served for a
file that no longer matches its database either: this is the view a person decides what to move by, so it shows
the file as it is or nothing (404).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Response

from retrieval.errors import IndexNotFoundError
from retrieval.index import SimilarityIndex
from retrieval.sources.file_identity import identify_file
from server.bodies import ImageId, require_proof
from server.state import State
from server.thumbnails import CACHING, thumbnail

SIZE = 2048

router = APIRouter(prefix="/api", tags=["review"], dependencies=[Depends(require_proof)])


@router.get("/image/{image_id}", responses={200: {"content": {"image/jpeg": {}}}})
async def rendition(state: State, image_id: ImageId) -> Response:
    """A JPEG of the indexed image, at most 2048 px on its long side (smaller images as they are); 404 once its
    file changed since it was indexed, 422 for one that no longer decodes."""
    made = await asyncio.to_thread(_rendition, state.served.index, image_id)  # off the event loop
    return Response(made, media_type="image/jpeg", headers={"Cache-Control": CACHING})


def _rendition(index: SimilarityIndex, image_id: int) -> bytes:
    row = index.image_by_id(image_id)
    if row is not None:
        identity = identify_file(row.path)
        if identity is None or not identity.is_as_indexed(row.file_id, row.size, row.mtime_ns):
            raise IndexNotFoundError(f"{row.path} no longer holds the image indexed there (run `simsearch index`)")
    return thumbnail(index, image_id, SIZE)
