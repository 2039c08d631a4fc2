"""The web page: its HTML at each of its views' URLs, and its script and style sheet, served from `static/`.

Each view has a URL that a reload or the back button comes back to: / (search), /duplicates (and ?page=N), and
/duplicates/group/<id> (one group); the server answers the same page at each, and the page draws the view its URL
names (History API). None of these needs the token (a browser's navigation cannot carry an Authorization header):
the page holds no data, reads the token from its URL's fragment and sends it with each API request.

Every answer here forbids framing (a page of another site could otherwise show this one in a frame and have the
user click "resolve" unawares) and allows scripts, styles, images and requests from this server alone (and
images from blob: URLs, which is how thumbnails are shown): nothing is fetched from anywhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException
from fastapi import Path as PathParameter
from fastapi.responses import FileResponse

from server.review_groups import GROUP_ID_PATTERN

STATIC = Path(__file__).parent / "static"
ASSETS = {"page.js": "text/javascript", "page.css": "text/css", "icon.svg": "image/svg+xml"}
"""The files of `static/` the page loads, and their media types: nothing else there is served."""
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


def _page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get("/")
async def search_view() -> FileResponse:
    """The page, on its search view."""
    return _page()


@router.get("/duplicates")
async def duplicates_view() -> FileResponse:
    """The page, on the list of duplicate groups (`?page=N`)."""
    return _page()


@router.get("/duplicates/group/{group_id}")
async def group_view(group_id: Annotated[str, PathParameter(pattern=GROUP_ID_PATTERN)]) -> FileResponse:
    """The page, on one duplicate group."""
    return _page()


@router.get("/static/{name}")
async def asset(name: str) -> FileResponse:
    """The page's script, style sheet and icon."""
    if name not in ASSETS:
        raise HTTPException(404, "no such file")
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers=PAGE_HEADERS)
