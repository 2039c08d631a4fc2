"""Whether the server answers (/api/health) and can serve (/api/ready): a load balancer's checks, answered
however many requests are in flight (`server.body_limits`); /api/health needs no token (`server.guards`)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from retrieval.errors import SimsearchError
from server.state import State

router = APIRouter(prefix="/api", tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(state: State) -> JSONResponse:
    """The index can be read and has a model to serve (503 otherwise, with the reason)."""
    try:
        collection, _ = state.served.collection()
        images = state.served.index.indexed_count()
    except SimsearchError as exc:
        return JSONResponse({"ready": False, "detail": " ".join(str(exc).split())}, status_code=503)
    return JSONResponse({"ready": True, "images": images, "model": collection.model.content_hash})
