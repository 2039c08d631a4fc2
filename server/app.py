"""The HTTP API over one index, with its model loaded once (FastAPI; the OpenAPI docs are at /docs).

Every answer is a library result's `to_dict()`, the same objects `--json` prints. Library errors become status
codes with a one-line `detail`: 400/413/422 for what the request got wrong, 404 for what is not there, 409 for a
model or calibration that does not fit, 503 when the server is busy or the index cannot be read. The index is
read afresh at each request (its FAISS cache follows the database's generation), so a re-index or a model switch
by another process is seen without a restart.

What a web page of another site could make a browser send, a foreign Host, an oversized, stalled or invalid body
are refused before any work (`server.guards`, `server.body_limits`, `server.bodies`): a client that is not a
browser sends JSON as `application/json`, and the header `X-Simsearch-Request: 1` with multipart uploads,
thumbnails and duplicate groups; with a token, `Authorization: Bearer <token>` on every route but / and health.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi import Path as PathParameter
from fastapi.responses import JSONResponse, Response
from starlette.middleware.trustedhost import TrustedHostMiddleware

from retrieval.collection import Collection
from retrieval.errors import (ArgumentTypeError, CalibrationError, DecodeError, IndexNotFoundError,
                              IndexUnavailableError, InputPathError, InvalidArgumentError, ModelError,
                              ModelMismatchError, SimsearchError)
from retrieval.images import DEFAULT_MAX_PIXELS
from retrieval.index import SimilarityIndex, open_index
from retrieval.inputs import k_argument
from retrieval.keeper_rules import DEFAULT_RULES
from retrieval.pixel_rule import signature
from retrieval.search import QueryResult
from retrieval.unit_distance import with_similarity
from server.batching import MAX_BATCH, WINDOW_SECONDS, EmbedBatcher
from server.bodies import Upload, form_body, json_body, path_value, require_proof, shown, threshold_value
from server.body_limits import BodyLimits, BodyRules
from server import docs_page, page, renditions, review
from server.guards import AnswerHeaders, CrossSiteGuard, trusted_hosts
from server.resolutions import QUARANTINE_FOLDER, Resolutions
from server.review import ReviewContext
from server.thumbnails import CACHING, thumbnail

STATUS_OF: list[tuple[type[SimsearchError], int]] = [
    (IndexNotFoundError, 404), (ModelMismatchError, 409), (CalibrationError, 409), (IndexUnavailableError, 503),
    (DecodeError, 422), (InputPathError, 422), (InvalidArgumentError, 422), (ArgumentTypeError, 422),
    (ModelError, 500),
]
MAX_DETAIL = 300
"""Characters of a library error's message in a `detail` (it may name what the client sent)."""
MAX_IMAGE_ID = 2**63 - 1
FORM_OVERHEAD = 1 << 20
"""Bytes a multipart body may hold beside its files: boundaries, part headers, the text fields."""


@dataclass(frozen=True)
class Limits:
    """What one server takes on: uploads (bytes, pixels), request bodies, requests in flight (beyond: 503), dedup
    pages and pairs."""

    max_upload_bytes: int = 50 << 20
    """One uploaded file; a multipart body may hold two (`max_form_bytes`)."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_in_flight: int = 64
    """Requests whose body is in and that are being answered (health and readiness aside)."""
    max_page: int = 500
    batch_window: float = WINDOW_SECONDS
    """Seconds a request waits for others to share its model batch (0: none wait)."""
    max_batch: int = MAX_BATCH
    max_json_bytes: int = 1 << 20
    """Any body that is not a multipart upload."""
    body_stall_seconds: float = 5.0
    """How long a request body may send nothing before it is cut off (408)."""
    max_duplicate_pairs: int = 1_000_000
    """Close pairs a duplicate-groups request may find (about 20 bytes each); a threshold that finds more is
    refused (422), before the memory is taken."""

    @property
    def max_form_bytes(self) -> int:
        """A multipart body: two files (verify's `a` and `b`) and its fields."""
        return 2 * self.max_upload_bytes + FORM_OVERHEAD


class _Served:
    """The index and the collection over it, made anew when the index's model changes under the server."""

    def __init__(self, root: Path, db: str | None, device: str | None, limits: Limits) -> None:
        self.root, self.db, self.device, self.limits = root, db, device, limits
        self.index: SimilarityIndex = open_index(root, db)
        self._collection: Collection | None = None
        self._batcher: EmbedBatcher | None = None
        self._lock = threading.Lock()

    def collection(self) -> tuple[Collection, EmbedBatcher]:
        with self._lock:
            served = self.index.served_model()
            if served is None:
                raise IndexNotFoundError(f"the index at {self.root} holds no images yet")
            if self._collection is None or self._collection.model.content_hash != served.content_hash:
                self._collection = Collection(self.index, None, self.device)
                self._batcher = EmbedBatcher(self._collection.embedder, self.limits.max_pixels,
                                             self.limits.batch_window, self.limits.max_batch)
            assert self._batcher is not None
            return self._collection, self._batcher


def create_app(root: Path, db: str | None = None, token: str | None = None, device: str | None = None,
               limits: Limits | None = None, hosts: Iterable[str] = (), quarantine: Path | None = None) -> FastAPI:
    """The app serving the index at `root` (its database `db`), answering requests addressed to a loopback name
    or one of `hosts` (Host headers; others get 400); with `token`, every route but the page and /api/health asks
    for `Authorization: Bearer <token>`. The page's "resolve" moves files under `quarantine` (default: the index
    directory's `quarantine/`) or to the trash."""
    limits = limits or Limits()
    served = _Served(root, db, device, limits)
    one_dedup_at_a_time = asyncio.Lock()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if served._batcher is not None:
            await served._batcher.close()

    # /docs is Swagger UI served from this server (server.docs_page); ReDoc exists only on a CDN.
    app = FastAPI(title="simsearch", summary="Image similarity search over one index", lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.served = served
    app.state.review = ReviewContext(served, limits.max_page, limits.max_duplicate_pairs, one_dedup_at_a_time,
                                     Resolutions(quarantine or root / QUARANTINE_FOLDER))
    for router in (page.router, docs_page.router, review.router, renditions.router):
        app.include_router(router)
    # The last added runs first: the Host, then who is asking, then the body as it comes.
    app.add_middleware(BodyLimits, rules=BodyRules(limits.max_json_bytes, limits.max_form_bytes,
                                                   limits.body_stall_seconds, limits.max_in_flight))
    app.add_middleware(CrossSiteGuard, token=token)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=trusted_hosts(hosts))
    app.add_middleware(AnswerHeaders)  # outermost: refusals get the headers too

    @app.exception_handler(RequestValidationError)
    async def invalid_parameter(_: Request, exc: RequestValidationError) -> JSONResponse:
        """One short line naming the parameter and what is wrong with it, never the value sent (FastAPI's own
        answer echoes it whole: a 60 KB query string came back in the 422)."""
        first = exc.errors()[0] if exc.errors() else {}
        where = " ".join(str(part) for part in first.get("loc", ()))
        return JSONResponse({"detail": shown(f"{where}: {first.get('msg', 'invalid')}")}, status_code=422)

    @app.exception_handler(SimsearchError)
    async def library_error(_: Request, exc: SimsearchError) -> JSONResponse:
        status = next((code for kind, code in STATUS_OF if isinstance(exc, kind)), 400)
        detail = " ".join(str(exc).split())
        return JSONResponse({"detail": detail if len(detail) <= MAX_DETAIL else detail[:MAX_DETAIL] + "..."},
                            status_code=status)

    async def embedded(upload: Upload, batcher: EmbedBatcher) -> tuple[str, np.ndarray]:
        result = await batcher.embed(upload.data)
        if result.error is not None:
            raise HTTPException(422, f"{shown(upload.name)}: {result.error}")
        assert result.vector is not None
        return upload.name, result.vector

    def number(value: object, name: str, kind: type = float) -> float | int | None:  # type: ignore[type-arg]
        if value is None or value == "":
            return None
        try:
            return kind(value)  # type: ignore[no-any-return]
        except (TypeError, ValueError):
            raise HTTPException(422, f"{name} must be a number, not {shown(value)[:40]!r}") from None

    @app.get("/api/thumbnail/{image_id}", dependencies=[Depends(require_proof)])
    async def thumbnail_of(image_id: Annotated[int, PathParameter(ge=0, le=MAX_IMAGE_ID)]) -> Response:
        """A small JPEG of an indexed image (made once, cached by content); 404 once its file changed. Needs the
        header `X-Simsearch-Request` (the page fetches thumbnails and shows them as blob URLs)."""
        made = await asyncio.to_thread(thumbnail, served.index, image_id)  # decoding a photo: off the event loop
        return Response(made, media_type="image/jpeg", headers={"Cache-Control": CACHING})

    @app.get("/api/health")
    async def health() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/api/ready")
    async def ready() -> JSONResponse:
        """The index can be read and has a model to serve (503 otherwise, with the reason)."""
        try:
            collection, _ = served.collection()
            images = served.index.store.indexed_count()
        except SimsearchError as exc:
            return JSONResponse({"ready": False, "detail": " ".join(str(exc).split())}, status_code=503)
        return JSONResponse({"ready": True, "images": images, "model": collection.model.content_hash})

    @app.post("/api/query")
    async def query(request: Request) -> dict[str, object]:
        """The k nearest indexed images of an uploaded image (multipart field `image`, optional `k`; with the
        header `X-Simsearch-Request`), or of an indexed one named by JSON `{"path": ..., "k": ...}` (its stored
        vector: nothing decoded). The answer is one object of `simsearch query --json`."""
        if request.headers.get("content-type", "").lower().startswith("application/json"):
            body = await json_body(request)
            if not isinstance(body, dict):
                raise HTTPException(422, 'send {"path": "<an indexed image>", "k": 5} or a multipart image')
            path = path_value(body.get("path"), "path")
            k = k_argument(body.get("k", 5))
            stored = served.index.store.vector_of_path(path)
            if stored is None:
                raise HTTPException(404, f"no indexed image at {shown(path)}")
            name, vector = path, np.frombuffer(stored, dtype=np.float32)
        else:
            form = await form_body(request, ["image"], limits.max_upload_bytes)
            k = k_argument(number(form.fields.get("k", 5), "k", int))
            name, vector = await embedded(form.files["image"], served.collection()[1])
        [neighbours] = served.index.search(vector[None], k)
        return QueryResult(name, neighbours).to_dict()

    @app.post("/api/verify")
    async def verify(request: Request) -> object:
        """Same or different: multipart files `a` and `b` (with the header `X-Simsearch-Request`); optional
        `threshold` or `precision`. Decided as `simsearch verify` decides (tiny and flat images on their pixels),
        with the cosine similarity beside each distance."""
        form = await form_body(request, ["a", "b"], limits.max_upload_bytes)
        collection, batcher = served.collection()
        fields = form.fields
        choice = collection.threshold_choice(number(fields.get("threshold"), "threshold"),  # type: ignore[arg-type]
                                             number(fields.get("precision"), "precision"))  # type: ignore[arg-type]
        # Both in one model batch; of two failures, `a`'s is the one reported.
        both = await asyncio.gather(*(embedded(form.files[field], batcher) for field in ("a", "b")),
                                    return_exceptions=True)
        for outcome in both:
            if isinstance(outcome, BaseException):
                raise outcome
        (_, first), (_, second) = both  # type: ignore[misc]
        looks = await asyncio.to_thread(lambda: tuple(signature(form.files[field].data, limits.max_pixels)
                                                      for field in ("a", "b")))
        return with_similarity(collection.verdict(first, second, choice, looks).to_dict())  # type: ignore[arg-type]

    @app.post("/api/classify")
    async def classify(request: Request) -> object:
        """The nearest class of an uploaded `image` among a support folder on the server (`support`: a folder of
        class subfolders); optional `prototype`, `threshold`, `precision`; with the header
        `X-Simsearch-Request`."""
        from indexer.labelled import support_from_folder

        form = await form_body(request, ["image"], limits.max_upload_bytes)
        support = path_value(form.fields.get("support"), "support (a folder of class subfolders on the server)")
        try:  # a folder tree walked: off the event loop
            classes = await asyncio.to_thread(support_from_folder, Path(support))
        except OSError as exc:
            raise HTTPException(422, f"support {shown(support)}: {exc.strerror or exc}") from None
        collection, batcher = served.collection()
        name, vector = await embedded(form.files["image"], batcher)
        # Embedding the support folder takes the model for a while: in a thread, so the event loop keeps answering.
        [result] = await asyncio.to_thread(
            collection.classify_vectors, classes, vector[None], [name],
            form.fields.get("prototype", "").lower() in ("1", "true", "yes"),
            number(form.fields.get("threshold"), "threshold"),  # type: ignore[arg-type]
            number(form.fields.get("precision"), "precision"),  # type: ignore[arg-type]
            looks=[lambda: signature(form.files["image"].data, limits.max_pixels)])
        return with_similarity(result.to_dict())

    @app.get("/api/duplicates", dependencies=[Depends(require_proof)])
    async def duplicates(threshold: float | None = None, precision: float | None = None, page: int = 1,
                         per_page: int = 50, keep: str = DEFAULT_RULES,
                         reference: str | None = None, lookalikes: bool = False) -> object:
        """Near-duplicate groups, largest first, a page at a time, with the threshold used and how the pairs were
        found; `keep` and `reference` as `simsearch dedup` takes them; "not duplicates" decisions honoured.
        Needs the header `X-Simsearch-Request` (no cross-site `<img>` can start the work); a threshold that finds
        more close pairs than the server's bound is a 422 (lower it). `lookalikes` (the flag of the answer) says
        whether the collection looks like one of look-alikes, where only exact copies are grouped unless
        `lookalikes=true` is asked; the cosine similarity is beside each distance."""
        if page < 1 or not 1 <= per_page <= limits.max_page:
            raise HTTPException(422, f"page must be 1 or more and per_page 1 to {limits.max_page}")
        collection, _ = served.collection()
        choice = collection.threshold_choice(threshold_value(threshold), precision)
        async with one_dedup_at_a_time:  # one search's memory at a time, and the event loop keeps answering
            found = await asyncio.to_thread(collection.find_duplicates, choice.threshold, keep=keep,
                                            reference=reference, max_pairs=limits.max_duplicate_pairs,
                                            lookalikes=lookalikes)
        start = (page - 1) * per_page
        return with_similarity({**choice.to_dict(), "pairs": found.pairs.to_dict(),
                                "lookalikes": found.lookalikes.to_dict(), "page": page, "per_page": per_page,
                                "total": len(found.groups),
                                "groups": [group.to_dict() for group in found.groups[start:start + per_page]]})

    @app.post("/api/decisions")
    async def not_duplicates(request: Request) -> dict[str, object]:
        """Record that two indexed images are not duplicates (`{"a": path, "b": path}`, as application/json): by
        content, for every later dedup."""
        body = await json_body(request)
        if not isinstance(body, dict) or not all(isinstance(body.get(key), str) for key in ("a", "b")):
            raise HTTPException(422, 'send {"a": "<an indexed image>", "b": "<another>"}')
        pair = (path_value(body["a"], "a"), path_value(body["b"], "b"))
        collection, _ = served.collection()
        return {"new": collection.mark_distinct([pair]) == 1}

    @app.post("/api/keepers")
    async def keeper(request: Request) -> dict[str, object]:
        """Choose an indexed image (`{"path": ...}`, as application/json) as the keeper of its groups, by content,
        for every later dedup."""
        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("path"), str):
            raise HTTPException(422, 'send {"path": "<an indexed image>"}')
        path = path_value(body["path"], "path")
        collection, _ = served.collection()
        return {"new": collection.mark_kept(path)}

    @app.get("/api/decisions")
    async def decisions() -> list[dict[str, object]]:
        """Every decision ("not duplicates", "keep"), with the paths that hold each content now."""
        collection, _ = served.collection()
        return collection.decisions()

    @app.post("/api/images")
    async def add_images(request: Request) -> dict[str, object]:
        """Index these paths on the server (`{"paths": [...]}`, as application/json), as `simsearch index`
        does."""
        from indexer.pipeline import IndexOptions, index_paths

        paths = await _paths(request)
        missing = [path for path in paths if not os.path.exists(path)]  # False, not an error, for a name too long
        if missing:
            raise HTTPException(404, f"no such file or directory: {shown(missing[0])}")
        collection, _ = served.collection()
        summary = await asyncio.to_thread(index_paths, served.index, paths, collection.model,
                                          IndexOptions(workers=0))  # the event loop keeps answering meanwhile
        return summary.to_dict()

    @app.delete("/api/images")
    async def remove_images(request: Request) -> dict[str, object]:
        """Forget these indexed paths (`{"paths": [...]}`, as application/json); the files themselves are never
        touched."""
        paths = [str(path) for path in await _paths(request)]
        rows = served.index.store.known_images(paths, 0, everything=False)
        gone = [row.id for path, row in rows.items() if path in paths]
        with served.index.store.writer():
            served.index.store.remove_images(gone)
        return {"removed": len(gone), "not_indexed": sorted(set(paths) - set(rows))}

    return app


async def _paths(request: Request) -> list[Path]:
    body = await json_body(request)
    paths = body.get("paths") if isinstance(body, dict) else None
    if not isinstance(paths, list) or not paths or not all(isinstance(path, str) for path in paths):
        raise HTTPException(422, 'send {"paths": ["/an/image.jpg", "/a/folder"]}')
    return [Path(path_value(path, "each of paths")).expanduser().absolute() for path in paths]
