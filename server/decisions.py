"""What a person decided about duplicates, kept by content for every later dedup: "not duplicates" (POST
/api/decisions), "keep this one" (POST /api/keepers), and every decision with the paths holding it now (GET
/api/decisions). Bodies are JSON sent as application/json (`json_body`)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request

from server.bodies import json_body, path_value
from server.state import State

router = APIRouter(prefix="/api", tags=["decisions"])


@router.post("/decisions")
async def not_duplicates(state: State, request: Request) -> dict[str, object]:
    """Record that two indexed images are not duplicates (`{"a": path, "b": path}`, as application/json): by
    content, for every later dedup."""
    body = await json_body(request)
    if not isinstance(body, dict) or not all(isinstance(body.get(key), str) for key in ("a", "b")):
        raise HTTPException(422, 'send {"a": "<an indexed image>", "b": "<another>"}')
    pair = (path_value(body["a"], "a"), path_value(body["b"], "b"))
    collection, _ = state.served.collection()
    return {"new": collection.mark_distinct([pair]) == 1}


@router.post("/keepers")
async def keeper(state: State, request: Request) -> dict[str, object]:
    """Choose an indexed image (`{"path": ...}`, as application/json) as the keeper of its groups, by content,
    for every later dedup."""
    body = await json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("path"), str):
        raise HTTPException(422, 'send {"path": "<an indexed image>"}')
    path = path_value(body["path"], "path")
    collection, _ = state.served.collection()
    return {"new": collection.mark_kept(path)}


@router.get("/decisions")
async def decisions(state: State) -> list[dict[str, object]]:
    """Every decision ("not duplicates", "keep"), with the paths that hold each content now."""
    collection, _ = state.served.collection()
    return collection.decisions()
