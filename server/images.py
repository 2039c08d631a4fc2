"""Indexed images by id and by path: a thumbnail (/api/thumbnail/{id}), and adding or forgetting paths on the
server (POST and DELETE /api/images), as `simsearch index` and `simsearch remove` do."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response

from retrieval.collection import Collection
from retrieval.sources.file_identity import something_at
from server.bodies import ImageId, json_body, path_value, require_proof, shown
from server.state import State
from server.thumbnails import CACHING, thumbnail

router = APIRouter(prefix="/api", tags=["images"])


@router.get("/thumbnail/{image_id}", dependencies=[Depends(require_proof)])
async def thumbnail_of(state: State, image_id: ImageId) -> Response:
    """A small JPEG of an indexed image (made once, cached by content); 404 once its file changed. Needs the
    header `X-Simsearch-Request` (the page fetches thumbnails and shows them as blob URLs)."""
    made = await asyncio.to_thread(thumbnail, state.served.index, image_id)  # decoding a photo: off the event loop
    return Response(made, media_type="image/jpeg", headers={"Cache-Control": CACHING})


@router.post("/images")
async def add_images(state: State, request: Request) -> dict[str, object]:
    """Index these paths on the server (`{"paths": [...]}`, as application/json), as `simsearch index`
    does."""
    from indexer.adding import add_to_index
    from indexer.pipeline import IndexOptions

    paths = await _paths(request)
    missing = [path for path in paths if not something_at(path)]
    if missing:
        raise HTTPException(404, f"no such file or directory: {shown(missing[0])}")
    collection, _ = state.served.collection()
    summary = await asyncio.to_thread(add_to_index, state.served.index, paths, collection.model,
                                      IndexOptions(workers=0))  # the event loop keeps answering meanwhile
    return summary.to_dict()


@router.delete("/images")
async def remove_images(state: State, request: Request) -> dict[str, object]:
    """Forget these indexed paths (`{"paths": [...]}`, as application/json); the files themselves are never
    touched."""
    paths = await _paths(request)
    removed, not_indexed = Collection(state.served.index).remove(paths)  # no model: forgetting loads none
    return {"removed": removed, "not_indexed": not_indexed}


async def _paths(request: Request) -> list[Path]:
    """The absolute paths a JSON body `{"paths": [...]}` names; 422 for any other body."""
    body = await json_body(request)
    paths = body.get("paths") if isinstance(body, dict) else None
    if not isinstance(paths, list) or not paths or not all(isinstance(path, str) for path in paths):
        raise HTTPException(422, 'send {"paths": ["/an/image.jpg", "/a/folder"]}')
    return [Path(path_value(path, "each of paths")).expanduser().absolute() for path in paths]
