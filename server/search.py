"""Search by an image (/api/query), same or different (/api/verify) and the nearest class (/api/classify).

Uploads are multipart with the header `X-Simsearch-Request` (`form_body`) and are embedded by the server's batcher,
so uploads arriving together share one model batch.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from fastapi import APIRouter, HTTPException, Request

from retrieval.decisions.pixel_rule import signature
from retrieval.sources.inputs import k_argument
from retrieval.vectors.unit_distance import with_similarity
from server.batching import EmbedBatcher
from server.bodies import Upload, form_body, json_body, path_value, shown
from server.state import State

router = APIRouter(prefix="/api", tags=["search"])


async def _embedded(upload: Upload, batcher: EmbedBatcher) -> tuple[str, np.ndarray]:
    """The upload's name and vector; 422 naming it when it does not decode."""
    result = await batcher.embed(upload.data)
    if result.error is not None:
        raise HTTPException(422, f"{shown(upload.name)}: {result.error}")
    assert result.vector is not None
    return upload.name, result.vector


def _number(value: object, name: str, kind: type = float) -> float | int | None:  # type: ignore[type-arg]
    """A form field as a number (None when absent or empty); 422 naming the field when it is not one."""
    if value is None or value == "":
        return None
    try:
        return kind(value)  # type: ignore[no-any-return]
    except (TypeError, ValueError):
        raise HTTPException(422, f"{name} must be a number, not {shown(value)[:40]!r}") from None


@router.post("/query")
async def query(state: State, request: Request) -> dict[str, object]:
    """The k nearest indexed images of an uploaded image (multipart field `image`, optional `k`; with the
    header `X-Simsearch-Request`), or of an indexed one named by JSON `{"path": ..., "k": ...}` (its stored
    vector: nothing decoded). The answer is one object of `simsearch query --json`."""
    served = state.served
    if request.headers.get("content-type", "").lower().startswith("application/json"):
        body = await json_body(request)
        if not isinstance(body, dict):
            raise HTTPException(422, 'send {"path": "<an indexed image>", "k": 5} or a multipart image')
        path = path_value(body.get("path"), "path")
        found = served.reader.query_indexed(path, body.get("k", 5))
        if found is None:
            raise HTTPException(404, f"no indexed image at {shown(path)}")
        return found.to_dict()
    form = await form_body(request, ["image"], state.limits.max_upload_bytes)
    k = k_argument(_number(form.fields.get("k", 5), "k", int))
    collection, batcher = served.collection()
    name, vector = await _embedded(form.files["image"], batcher)
    return collection.query_vector(name, vector, k).to_dict()


@router.post("/verify")
async def verify(state: State, request: Request) -> object:
    """Same or different: multipart files `a` and `b` (with the header `X-Simsearch-Request`); optional
    `threshold` or `precision`. Decided as `simsearch verify` decides (tiny and flat images on their pixels),
    with the cosine similarity beside each distance."""
    form = await form_body(request, ["a", "b"], state.limits.max_upload_bytes)
    collection, batcher = state.served.collection()
    fields = form.fields
    choice = collection.threshold_choice(_number(fields.get("threshold"), "threshold"),  # type: ignore[arg-type]
                                         _number(fields.get("precision"), "precision"))  # type: ignore[arg-type]
    # Both in one model batch; of two failures, `a`'s is the one reported.
    both = await asyncio.gather(*(_embedded(form.files[field], batcher) for field in ("a", "b")),
                                return_exceptions=True)
    for outcome in both:
        if isinstance(outcome, BaseException):
            raise outcome
    (_, first), (_, second) = both  # type: ignore[misc]
    max_pixels = state.limits.max_pixels
    looks = await asyncio.to_thread(lambda: tuple(signature(form.files[field].data, max_pixels)
                                                  for field in ("a", "b")))
    return with_similarity(collection.verdict(first, second, choice, looks).to_dict())  # type: ignore[arg-type]


@router.post("/classify")
async def classify(state: State, request: Request) -> object:
    """The nearest class of an uploaded `image` among a support folder on the server (`support`: a folder of
    class subfolders); optional `prototype`, `threshold`, `precision`; with the header
    `X-Simsearch-Request`."""
    from retrieval.sources.labelled import support_from_folder

    form = await form_body(request, ["image"], state.limits.max_upload_bytes)
    support = path_value(form.fields.get("support"), "support (a folder of class subfolders on the server)")
    try:  # a folder tree walked: off the event loop
        classes = await asyncio.to_thread(support_from_folder, Path(support))
    except OSError as exc:
        raise HTTPException(422, f"support {shown(support)}: {exc.strerror or exc}") from None
    collection, batcher = state.served.collection()
    name, vector = await _embedded(form.files["image"], batcher)
    max_pixels = state.limits.max_pixels
    # Embedding the support folder takes the model for a while: in a thread, so the event loop keeps answering.
    [result] = await asyncio.to_thread(
        collection.classify_vectors, classes, vector[None], [name],
        form.fields.get("prototype", "").lower() in ("1", "true", "yes"),
        _number(form.fields.get("threshold"), "threshold"),  # type: ignore[arg-type]
        _number(form.fields.get("precision"), "precision"),  # type: ignore[arg-type]
        looks=[lambda: signature(form.files["image"].data, max_pixels)])
    return with_similarity(result.to_dict())
