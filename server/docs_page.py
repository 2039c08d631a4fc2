"""The API's documentation at /docs, Swagger UI served by this server from the package `swagger-ui-bundle-v2`:
FastAPI's own /docs loads its script and style sheet from a CDN, which leaves the page blank offline and tells a
third party whenever it is opened. ReDoc (/redoc), which only a CDN serves, is not offered.

With a token, /docs, /openapi.json and these files need it, as every route but the page does.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon-32x32.png": "image/png"}
PREFIX = "/docs/assets/"

router = APIRouter(include_in_schema=False)


def _swagger_folder() -> Path:
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        raise HTTPException(503, "the API docs need the server's extra: pip install 'simsearch[server]' "
                                 "(swagger-ui-bundle-v2 is missing)") from None
    return Path(str(swagger_ui_path))


@router.get("/docs")
async def docs() -> HTMLResponse:
    """Swagger UI over /openapi.json, every file of it from this server."""
    _swagger_folder()
    return get_swagger_ui_html(openapi_url="/openapi.json", title="simsearch API",
                               swagger_js_url=PREFIX + "swagger-ui-bundle.js",
                               swagger_css_url=PREFIX + "swagger-ui.css",
                               swagger_favicon_url=PREFIX + "favicon-32x32.png",
                               swagger_ui_parameters={"validatorUrl": None})  # no badge from validator.swagger.io


@router.get(PREFIX + "{name}")
async def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise HTTPException(404, "no such file")
    return FileResponse(_swagger_folder() / name, media_type=ASSETS[name],
                        headers={"Cache-Control": "public, max-age=86400"})
