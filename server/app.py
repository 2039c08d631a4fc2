"""The HTTP API over one index, with its model loaded once (FastAPI; the OpenAPI docs are at /docs).

Every answer is a library result's `to_dict()`, the same objects `--json` prints. Library errors become status
codes with a one-line `detail`: 400/413/422 for what the request got wrong, 404 for what is not there, 409 for a
model or calibration that does not fit, 503 when the server is busy or the index cannot be read. The index is
read afresh at each request (its FAISS cache follows the database's generation), so a re-index or a model switch
by another process is seen without a restart.

The routes are in routers by concern (`server.search`, `server.images`, `server.duplicates`, `server.decisions`,
`server.review`, `server.renditions`, `server.health`, the page and /docs); each gets the index, the collection
and the limits it needs as a dependency (`server.state`), and the proof header where it needs one
(`server.bodies.require_proof`).

What a web page of another site could make a browser send, a foreign Host, a missing token, an oversized, stalled
or invalid body are refused by middleware before any route is chosen (`server.guards`, `server.body_limits`): a
client that is not a browser sends JSON as `application/json`, and the header `X-Simsearch-Request: 1` with
multipart uploads, thumbnails and duplicate groups; with a token, `Authorization: Bearer <token>` on every route
but / and health.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.middleware.trustedhost import TrustedHostMiddleware

from retrieval.errors import (ArgumentTypeError, CalibrationError, DecodeError, IndexNotFoundError,
                              IndexUnavailableError, InputPathError, InvalidArgumentError, ModelError,
                              ModelMismatchError, SimsearchError)
from server import decisions, docs_page, duplicates, health, images, page, renditions, review, search
from server.bodies import shown
from server.body_limits import BodyLimits, BodyRules
from server.guards import AnswerHeaders, CrossSiteGuard, trusted_hosts
from server.resolutions import QUARANTINE_FOLDER, Resolutions
from server.state import Limits, Served, ServerState

STATUS_OF: list[tuple[type[SimsearchError], int]] = [
    (IndexNotFoundError, 404), (ModelMismatchError, 409), (CalibrationError, 409), (IndexUnavailableError, 503),
    (DecodeError, 422), (InputPathError, 422), (InvalidArgumentError, 422), (ArgumentTypeError, 422),
    (ModelError, 500),
]
MAX_DETAIL = 300
"""Characters of a library error's message in a `detail` (it may name what the client sent)."""
ROUTERS = (page.router, docs_page.router, health.router, search.router, images.router, renditions.router,
           duplicates.router, decisions.router, review.router)


def create_app(root: Path, db: str | None = None, token: str | None = None, device: str | None = None,
               limits: Limits | None = None, hosts: Iterable[str] = (), quarantine: Path | None = None) -> FastAPI:
    """The app serving the index at `root` (its database `db`), answering requests addressed to a loopback name
    or one of `hosts` (Host headers; others get 400); with `token`, every route but the page and /api/health asks
    for `Authorization: Bearer <token>`. The page's "resolve" moves files under `quarantine` (default: the index
    directory's `quarantine/`) or to the trash."""
    limits = limits or Limits()
    state = ServerState(Served(root, db, device, limits), limits, asyncio.Lock(),
                        Resolutions(quarantine or root / QUARANTINE_FOLDER))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await state.served.close()

    # /docs is Swagger UI served from this server (server.docs_page); ReDoc exists only on a CDN.
    app = FastAPI(title="simsearch", summary="Image similarity search over one index", lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.server = state
    for router in ROUTERS:
        app.include_router(router)
    app.add_exception_handler(RequestValidationError, _invalid_parameter)  # type: ignore[arg-type]
    app.add_exception_handler(SimsearchError, _library_error)  # type: ignore[arg-type]
    # The last added runs first: the Host, then who is asking, then the body as it comes.
    app.add_middleware(BodyLimits, rules=BodyRules(limits.max_json_bytes, limits.max_form_bytes,
                                                   limits.body_stall_seconds, limits.max_in_flight))
    app.add_middleware(CrossSiteGuard, token=token)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=trusted_hosts(hosts))
    app.add_middleware(AnswerHeaders)  # outermost: refusals get the headers too
    return app


async def _invalid_parameter(_: Request, exc: RequestValidationError) -> JSONResponse:
    """One short line naming the parameter and what is wrong with it, never the value sent (FastAPI's own answer
    echoes it whole: a 60 KB query string came back in the 422)."""
    first = exc.errors()[0] if exc.errors() else {}
    where = " ".join(str(part) for part in first.get("loc", ()))
    return JSONResponse({"detail": shown(f"{where}: {first.get('msg', 'invalid')}")}, status_code=422)


async def _library_error(_: Request, exc: SimsearchError) -> JSONResponse:
    """A library error as its status code (`STATUS_OF`; 400 for any other) and its message, on one line."""
    status = next((code for kind, code in STATUS_OF if isinstance(exc, kind)), 400)
    detail = " ".join(str(exc).split())
    return JSONResponse({"detail": detail if len(detail) <= MAX_DETAIL else detail[:MAX_DETAIL] + "..."},
                        status_code=status)
