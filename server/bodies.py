"""What a route reads from a request, read only as a browser cannot send it from another site without asking first.

JSON is taken only as `Content-Type: application/json` (415 otherwise: a `<form>` or a `no-cors` fetch can send
`text/plain`, never JSON), must be UTF-8 JSON (400). Multipart uploads, which a `<form>` can send, are taken only
with the header `X-Simsearch-Request` (403 otherwise), which no form can carry and which a script of another
origin cannot add without a CORS preflight this server never grants. Details name what was wrong, never echo
what was sent beyond `SHOWN` characters.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from fastapi import HTTPException, Request
from fastapi import Path as PathParameter
from starlette.datastructures import UploadFile

PROOF_HEADER = "X-Simsearch-Request"
"""The header that proves a request is not a cross-site form or `<img>`: uploads, thumbnails and duplicate
groups need it (any value; the page and the benchmarks send "1")."""
SHOWN = 120
"""Characters of a value sent by the client that an error detail repeats."""
MAX_PATH = 4096
"""A path longer than Linux's PATH_MAX names nothing."""
MAX_FORM_FIELDS = 8
MAX_IMAGE_ID = 2**63 - 1
"""The largest image id (a 64-bit signed database id): a larger number names no image."""
ImageId = Annotated[int, PathParameter(ge=0, le=MAX_IMAGE_ID)]
"""An image id in a route's path: 422 for a number out of range."""


def shown(value: object) -> str:
    """`value` as an error detail repeats it: one line, at most `SHOWN` characters."""
    text = " ".join(str(value).split())
    return text if len(text) <= SHOWN else text[:SHOWN] + "..."


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def require_proof(request: Request) -> None:
    """A FastAPI dependency of the routes a cross-site `<img>` or `<form>` must not reach."""
    if not request.headers.get(PROOF_HEADER):
        raise HTTPException(403, f"send the header {PROOF_HEADER}: 1 with this request (the page does; a page "
                                 "of another site cannot)")


async def json_body(request: Request) -> object:
    """The request's JSON body: 415 unless it is sent as application/json, 400 unless it is UTF-8 JSON."""
    if media_type(request) != "application/json":
        raise HTTPException(415, "send the body as JSON, with Content-Type: application/json")
    try:
        text = (await request.body()).decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(400, "the body is not UTF-8") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        raise HTTPException(400, "the body is not valid JSON") from None


MAX_THRESHOLD = 4.0
"""The largest squared-L2 distance between two unit vectors: a threshold above it names no other groups, and one
far above it (1e308) does not fit the float32 the vector search takes."""


def threshold_value(threshold: float | None) -> float | None:
    """A duplicate search's threshold as a client sends it: 422 above `MAX_THRESHOLD` (the library refuses what
    is negative or not finite)."""
    if threshold is not None and threshold > MAX_THRESHOLD:
        raise HTTPException(422, f"threshold must be a squared-L2 distance from 0 to {MAX_THRESHOLD:g}")
    return threshold


def path_value(value: object, what: str) -> str:
    """`value` as a path on the server: a non-empty string without NUL, at most `MAX_PATH` characters (422)."""
    if not isinstance(value, str) or not value:
        raise HTTPException(422, f"{what} must be a path")
    if "\0" in value or len(value) > MAX_PATH:
        raise HTTPException(422, f"{what} is not a path: {shown(value)}")
    return value


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes


@dataclass(frozen=True)
class Form:
    """A multipart request's files (each read whole, within the limit) and its text fields."""

    files: dict[str, Upload]
    fields: dict[str, str]


async def form_body(request: Request, files: Sequence[str], max_upload_bytes: int) -> Form:
    """The multipart upload with these file fields: 415 unless multipart, 403 without `PROOF_HEADER`, 422 for a
    missing or empty file, 413 for one over `max_upload_bytes`."""
    if media_type(request) != "multipart/form-data":
        raise HTTPException(415, "send the image as multipart/form-data (or JSON where the route takes it)")
    require_proof(request)
    async with request.form(max_files=len(files), max_fields=MAX_FORM_FIELDS) as form:
        uploads = {}
        for name in files:
            value = form.get(name)
            if not isinstance(value, UploadFile):
                raise HTTPException(422, f"send the image as a multipart file field {name!r}")
            label = shown(value.filename or name)
            data = await value.read(max_upload_bytes + 1)
            if len(data) > max_upload_bytes:
                raise HTTPException(413, f"{label} is larger than {max_upload_bytes:,} bytes")
            if not data:
                raise HTTPException(422, f"{label} is empty")
            uploads[name] = Upload(value.filename or "upload", data)
        fields = {key: value for key, value in form.multi_items() if isinstance(value, str)}
    return Form(uploads, fields)
