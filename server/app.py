"""The HTTP API over one index, with its model loaded once (FastAPI; the OpenAPI docs are at /docs).

Every answer is a library result's `to_dict()`, the same objects `--json` prints. Library errors become status
codes with a one-line `detail`: 400/413/422 for what the request got wrong, 404 for what is not there, 409 for a
model or calibration that does not fit, 503 when the server is busy or the index cannot be read. The index is
read afresh at each request (its FAISS cache follows the database's generation), so a re-index or a model switch
by another process is seen without a restart.
"""

from __future__ import annotations

import asyncio
import hmac
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.datastructures import FormData, UploadFile

from retrieval.collection import Collection
from retrieval.errors import (ArgumentTypeError, CalibrationError, DecodeError, IndexNotFoundError,
                              IndexUnavailableError, InputPathError, InvalidArgumentError, ModelError,
                              ModelMismatchError, SimsearchError)
from retrieval.images import DEFAULT_MAX_PIXELS
from retrieval.index import SimilarityIndex, open_index
from retrieval.inputs import k_argument
from retrieval.keeper_rules import DEFAULT_RULES
from retrieval.search import QueryResult
from server.batching import MAX_BATCH, WINDOW_SECONDS, EmbedBatcher
from server.thumbnails import thumbnail

STATIC = Path(__file__).parent / "static"

STATUS_OF: list[tuple[type[SimsearchError], int]] = [
    (IndexNotFoundError, 404), (ModelMismatchError, 409), (CalibrationError, 409), (IndexUnavailableError, 503),
    (DecodeError, 422), (InputPathError, 422), (InvalidArgumentError, 422), (ArgumentTypeError, 422),
    (ModelError, 500),
]


@dataclass(frozen=True)
class Limits:
    """What one server takes on: uploads (bytes, pixels), requests in flight (beyond: 503), dedup pages."""

    max_upload_bytes: int = 50 << 20
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_in_flight: int = 64
    max_page: int = 500
    batch_window: float = WINDOW_SECONDS
    """Seconds a request waits for others to share its model batch (0: none wait)."""
    max_batch: int = MAX_BATCH


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
               limits: Limits | None = None) -> FastAPI:
    """The app serving the index at `root` (its database `db`); with `token`, every /api route but health asks
    for `Authorization: Bearer <token>`."""
    limits = limits or Limits()
    served = _Served(root, db, device, limits)
    in_flight = {"count": 0}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if served._batcher is not None:
            await served._batcher.close()

    app = FastAPI(title="simsearch", summary="Image similarity search over one index", lifespan=lifespan)
    app.state.served = served

    @app.exception_handler(SimsearchError)
    async def library_error(_: Request, exc: SimsearchError) -> JSONResponse:
        status = next((code for kind, code in STATUS_OF if isinstance(exc, kind)), 400)
        return JSONResponse({"detail": " ".join(str(exc).split())}, status_code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.url.path
        if token is not None and path.startswith("/api/") and path != "/api/health":
            given = request.headers.get("authorization", "")
            if path.startswith("/api/thumbnail/") and "token" in request.query_params:  # an <img> sends no header
                given = f"Bearer {request.query_params['token']}"
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return JSONResponse({"detail": "a bearer token is needed (Authorization: Bearer <token>)"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
        if not path.startswith("/api/") or path in ("/api/health", "/api/ready"):
            return await call_next(request)
        if in_flight["count"] >= limits.max_in_flight:
            return JSONResponse({"detail": f"busy: {limits.max_in_flight} requests in flight; retry shortly"},
                                status_code=503, headers={"Retry-After": "1"})
        in_flight["count"] += 1
        try:
            return await call_next(request)
        finally:
            in_flight["count"] -= 1

    async def upload_bytes(upload: UploadFile) -> bytes:
        data = await upload.read(limits.max_upload_bytes + 1)
        if len(data) > limits.max_upload_bytes:
            raise HTTPException(413, f"{upload.filename or 'the upload'} is larger than "
                                     f"{limits.max_upload_bytes:,} bytes")
        if not data:
            raise HTTPException(422, f"{upload.filename or 'the upload'} is empty")
        return data

    async def embedded(upload: UploadFile, batcher: EmbedBatcher) -> tuple[str, np.ndarray]:
        name = upload.filename or "upload"
        result = await batcher.embed(await upload_bytes(upload))
        if result.error is not None:
            raise HTTPException(422, f"{name}: {result.error}")
        assert result.vector is not None
        return name, result.vector

    def upload_field(form: FormData, name: str) -> UploadFile:
        value = form.get(name)
        if not isinstance(value, UploadFile):
            raise HTTPException(422, f"send the image as a multipart file field {name!r}")
        return value

    def number(value: object, name: str, kind: type = float) -> float | int | None:  # type: ignore[type-arg]
        if value is None or value == "":
            return None
        try:
            return kind(value)  # type: ignore[no-any-return]
        except (TypeError, ValueError):
            raise HTTPException(422, f"{name} must be a number, not {str(value)[:40]!r}") from None

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        """The web page: search by an image, review duplicate groups and decide."""
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/thumbnail/{image_id}", include_in_schema=True)
    async def thumbnail_of(image_id: int) -> FileResponse:
        """A small JPEG of an indexed image (made once, cached by content); 404 once its file changed."""
        return FileResponse(thumbnail(served.index, image_id), media_type="image/jpeg",
                            headers={"Cache-Control": "max-age=86400"})

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
        """The k nearest indexed images of an uploaded image (multipart field `image`, optional `k`), or of an
        indexed one named by JSON `{"path": ..., "k": ...}` (its stored vector: nothing decoded). The answer is
        one object of `simsearch query --json`."""
        if request.headers.get("content-type", "").startswith("application/json"):
            body = await request.json()
            if not isinstance(body, dict) or not isinstance(body.get("path"), str):
                raise HTTPException(422, 'send {"path": "<an indexed image>", "k": 5} or a multipart image')
            k = k_argument(body.get("k", 5))
            stored = served.index.store.vector_of_path(body["path"])
            if stored is None:
                raise HTTPException(404, f"no indexed image at {body['path']}")
            name, vector = body["path"], np.frombuffer(stored, dtype=np.float32)
        else:
            form = await request.form()
            k = k_argument(number(form.get("k", 5), "k", int))
            name, vector = await embedded(upload_field(form, "image"), served.collection()[1])
        [neighbours] = served.index.search(vector[None], k)
        return QueryResult(name, neighbours).to_dict()

    @app.post("/api/verify")
    async def verify(request: Request) -> dict[str, object]:
        """Same or different: multipart files `a` and `b`; optional `threshold` or `precision`."""
        form = await request.form()
        collection, batcher = served.collection()
        choice = collection.threshold_choice(number(form.get("threshold"), "threshold"),  # type: ignore[arg-type]
                                             number(form.get("precision"), "precision"))  # type: ignore[arg-type]
        uploads = [upload_field(form, field) for field in ("a", "b")]
        # Both in one model batch; of two failures, `a`'s is the one reported.
        both = await asyncio.gather(*(embedded(upload, batcher) for upload in uploads), return_exceptions=True)
        for outcome in both:
            if isinstance(outcome, BaseException):
                raise outcome
        (_, first), (_, second) = both  # type: ignore[misc]
        return collection.verdict(first, second, choice).to_dict()

    @app.post("/api/classify")
    async def classify(request: Request) -> dict[str, object]:
        """The nearest class of an uploaded `image` among a support folder on the server (`support`: a folder of
        class subfolders); optional `prototype`, `threshold`, `precision`."""
        from indexer.labelled import support_from_folder

        form = await request.form()
        support = form.get("support")
        if not isinstance(support, str) or not support:
            raise HTTPException(422, "send `support`: a folder of class subfolders on the server")
        classes = support_from_folder(Path(support))
        collection, batcher = served.collection()
        name, vector = await embedded(upload_field(form, "image"), batcher)
        # Embedding the support folder takes the model for a while: in a thread, so the event loop keeps answering.
        [result] = await asyncio.to_thread(
            collection.classify_vectors, classes, vector[None], [name],
            str(form.get("prototype", "")).lower() in ("1", "true", "yes"),
            number(form.get("threshold"), "threshold"),  # type: ignore[arg-type]
            number(form.get("precision"), "precision"))  # type: ignore[arg-type]
        return result.to_dict()

    @app.get("/api/duplicates")
    async def duplicates(threshold: float | None = None, precision: float | None = None, page: int = 1,
                         per_page: int = 50, keep: str = DEFAULT_RULES,
                         reference: str | None = None) -> dict[str, object]:
        """Near-duplicate groups, largest first, a page at a time, with the threshold used and how the pairs were
        found; `keep` and `reference` as `simsearch dedup` takes them; "not duplicates" decisions honoured."""
        if page < 1 or not 1 <= per_page <= limits.max_page:
            raise HTTPException(422, f"page must be 1 or more and per_page 1 to {limits.max_page}")
        collection, _ = served.collection()
        choice = collection.threshold_choice(threshold, precision)
        found = collection.find_duplicates(choice.threshold, keep=keep, reference=reference)
        start = (page - 1) * per_page
        return {**choice.to_dict(), "pairs": found.pairs.to_dict(), "page": page, "per_page": per_page,
                "total": len(found.groups),
                "groups": [group.to_dict() for group in found.groups[start:start + per_page]]}

    @app.post("/api/decisions")
    async def not_duplicates(request: Request) -> dict[str, object]:
        """Record that two indexed images are not duplicates (`{"a": path, "b": path}`): by content, for every
        later dedup."""
        body = await request.json()
        if not isinstance(body, dict) or not all(isinstance(body.get(key), str) for key in ("a", "b")):
            raise HTTPException(422, 'send {"a": "<an indexed image>", "b": "<another>"}')
        collection, _ = served.collection()
        return {"new": collection.mark_distinct([(body["a"], body["b"])]) == 1}

    @app.post("/api/keepers")
    async def keeper(request: Request) -> dict[str, object]:
        """Choose an indexed image (`{"path": ...}`) as the keeper of its groups, by content, for every later
        dedup."""
        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("path"), str):
            raise HTTPException(422, 'send {"path": "<an indexed image>"}')
        collection, _ = served.collection()
        return {"new": collection.mark_kept(body["path"])}

    @app.get("/api/decisions")
    async def decisions() -> list[dict[str, object]]:
        """Every decision ("not duplicates", "keep"), with the paths that hold each content now."""
        collection, _ = served.collection()
        return collection.decisions()

    @app.post("/api/images")
    async def add_images(request: Request) -> dict[str, object]:
        """Index these paths on the server (`{"paths": [...]}`), as `simsearch index` does."""
        from indexer.pipeline import IndexOptions, index_paths

        paths = await _paths(request)
        missing = [path for path in paths if not path.exists()]
        if missing:
            raise HTTPException(404, f"no such file or directory: {missing[0]}")
        collection, _ = served.collection()
        summary = await asyncio.to_thread(index_paths, served.index, paths, collection.model,
                                          IndexOptions(workers=0))  # the event loop keeps answering meanwhile
        return summary.to_dict()

    @app.delete("/api/images")
    async def remove_images(request: Request) -> dict[str, object]:
        """Forget these indexed paths (`{"paths": [...]}`); the files themselves are never touched."""
        paths = [str(path) for path in await _paths(request)]
        rows = served.index.store.known_images(paths, 0, everything=False)
        gone = [row.id for path, row in rows.items() if path in paths]
        with served.index.store.writer():
            served.index.store.remove_images(gone)
        return {"removed": len(gone), "not_indexed": sorted(set(paths) - set(rows))}

    return app


async def _paths(request: Request) -> list[Path]:
    body = await request.json()
    paths = body.get("paths") if isinstance(body, dict) else None
    if not isinstance(paths, list) or not paths or not all(isinstance(path, str) for path in paths):
        raise HTTPException(422, 'send {"paths": ["/an/image.jpg", "/a/folder"]}')
    return [Path(path).expanduser().absolute() for path in paths]
