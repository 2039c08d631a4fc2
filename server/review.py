"""The review page's API (/api/review/...): duplicate groups with ids and their members' facts, a group by its id,
"resolve" (a group's others to the quarantine folder or the trash) and its undo, the resolves made, and the facts
of images by id (for search results).

Every route needs the header `X-Simsearch-Request` (`require_proof`), as duplicate groups and thumbnails do: no
cross-site `<img>` or `<form>` can start the work or act. POST bodies are JSON sent as application/json
(`json_body`), and name groups, images and resolves only by their ids: where files move is the server's choice
(`server.resolutions`), and what moves is a group the server finds again itself, whose keeper must still be the
one the page showed. Groups are computed off the event loop, one computation at a time (the lock /api/duplicates takes
too, `ServerState.one_search_at_a_time`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParameter

from retrieval.collection import ThresholdChoice
from retrieval.decisions.dedup import Candidate, DuplicateSearch
from retrieval.decisions.keeper_rules import DEFAULT_RULES
from retrieval.decisions.moves import MoveReport
from retrieval.errors import MoveError
from retrieval.vectors.unit_distance import cosine_similarity
from server.bodies import MAX_IMAGE_ID, json_body, path_value, require_proof, shown, threshold_value
from server.resolutions import RESOLUTION_ID
from server.review_groups import GROUP_ID_PATTERN, display_root, find_group, group_view, member_view
from server.state import ServerState, State

T = TypeVar("T")
MAX_IDS = 200
"""Images one facts request may name (a search shows at most 100)."""


router = APIRouter(prefix="/api/review", tags=["review"], dependencies=[Depends(require_proof)])


@dataclass(frozen=True)
class GroupSettings:
    """How groups are made, as /api/duplicates and `simsearch dedup` take it."""

    threshold: float | None = None
    precision: float | None = None
    keep: str = DEFAULT_RULES
    reference: str | None = None

    @classmethod
    def of(cls, body: dict[str, object]) -> GroupSettings:
        """The settings a JSON body names (422 for a value of the wrong type)."""
        def number(key: str) -> float | None:
            value = body.get(key)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise HTTPException(422, f"{key} must be a number")
            return float(value)

        keep = body.get("keep") or DEFAULT_RULES
        if not isinstance(keep, str):
            raise HTTPException(422, "keep must be keeper rules, such as largest,oldest")
        reference = body.get("reference")
        return cls(threshold_value(number("threshold")), number("precision"), keep,
                   None if reference is None else path_value(reference, "reference"))


def group_settings(threshold: float | None = None, precision: float | None = None, keep: str = "",
                   reference: str | None = None) -> GroupSettings:
    return GroupSettings(threshold_value(threshold), precision, keep or DEFAULT_RULES,
                         None if reference is None else path_value(reference, "reference"))


Settings = Annotated[GroupSettings, Depends(group_settings)]


@dataclass(frozen=True)
class Found:
    choice: ThresholdChoice
    search: DuplicateSearch
    root: str


async def found_groups(context: ServerState, settings: GroupSettings) -> Found:
    """The groups at `settings`, and the folder their paths are shown relative to."""
    return await acting_on_groups(context, settings, lambda found: found)


async def acting_on_groups(context: ServerState, settings: GroupSettings, then: Callable[[Found], T]) -> T:
    """What `then` makes of the groups at `settings`, in the same turn of the lock that found them (a resolve acts
    on the groups it found, and no other search or resolve runs meanwhile)."""
    collection, _ = context.served.collection()
    choice = collection.threshold_choice(settings.threshold, settings.precision)

    def search() -> T:
        found = collection.find_duplicates(choice.threshold, keep=settings.keep, reference=settings.reference,
                                           max_pairs=context.limits.max_duplicate_pairs)
        root = display_root(row.path for row in context.served.index.indexed_images())
        return then(Found(choice, found, root))

    async with context.one_search_at_a_time:  # one search's memory at a time; the event loop keeps answering
        return await asyncio.to_thread(search)


def _summary(found: Found, per_page: int) -> dict[str, object]:
    total = len(found.search.groups)
    return {**found.choice.to_dict(), "similarity": round(cosine_similarity(found.choice.threshold), 6),
            "pairs": found.search.pairs.to_dict(), "total": total, "per_page": per_page,
            "pages": max(1, -(-total // per_page)), "root": found.root}


def _per_page(context: ServerState, per_page: int) -> int:
    if not 1 <= per_page <= context.limits.max_page:
        raise HTTPException(422, f"per_page must be 1 to {context.limits.max_page}")
    return per_page


@router.get("/groups")
async def groups(context: State, settings: Settings, page: Annotated[int, Query(ge=1)] = 1,
                 per_page: int = 50) -> dict[str, object]:
    """Duplicate groups, largest first, a page at a time (past the last page: none), each with its id, the rule
    that chose its keeper and its members' facts (dimensions, file size, format, date, folder, distance and cosine
    similarity to the keeper, exact copies marked); `root` is the folder the members' `relative` paths start
    at."""
    per_page = _per_page(context, per_page)
    found = await found_groups(context, settings)
    start = (page - 1) * per_page
    views = await asyncio.to_thread(lambda: [group_view(group, found.root)  # reads each member's header
                                             for group in found.search.groups[start:start + per_page]])
    return {**_summary(found, per_page), "page": page, "groups": views}


@router.get("/groups/{group_id}")
async def group(context: State, settings: Settings,
                group_id: Annotated[str, PathParameter(pattern=GROUP_ID_PATTERN)],
                per_page: int = 50) -> dict[str, object]:
    """The group `group_id` now, with its position among all groups (from 0) and the page that holds it at
    `per_page`; 404 when no group has that id any more (a member left or joined: a decision, a move, a change)."""
    per_page = _per_page(context, per_page)
    found = await found_groups(context, settings)
    hit = find_group(found.search.groups, group_id)
    if hit is None:
        raise HTTPException(404, f"no group {group_id} now: its members changed, or it was resolved")
    position, chosen = hit
    view = await asyncio.to_thread(group_view, chosen, found.root)
    return {**_summary(found, per_page), "position": position, "page": position // per_page + 1, "group": view}


@router.post("/resolve")
async def resolve(context: State, request: Request) -> dict[str, object]:
    """Resolve a group: `{"group": id, "keeper": image_id, "destination": "quarantine" | "trash"}` and the
    settings its groups were made with (`threshold`, `precision`, `keep`, `reference`). Its others are moved as
    `dedup --move-to` or `--trash` moves them, each checked just before, into a resolve of their own whose
    manifest `simsearch undo` takes; they leave the index. 404 when the group is not there now, 409 when its
    keeper is no longer the one given."""
    body = await json_body(request)
    if not isinstance(body, dict):
        raise HTTPException(422, 'send {"group": "<id>", "keeper": <image id>, "destination": "quarantine"}')
    wanted, keeper, destination = body.get("group"), body.get("keeper"), body.get("destination", "quarantine")
    if not isinstance(wanted, str) or len(wanted) > 64:
        raise HTTPException(422, "group must be a group's id")
    if isinstance(keeper, bool) or not isinstance(keeper, int):
        raise HTTPException(422, "keeper must be the image id of the group's keeper")
    if destination not in ("quarantine", "trash"):
        raise HTTPException(422, 'destination must be "quarantine" or "trash"')
    settings = GroupSettings.of(body)

    def act(found: Found) -> tuple[str, MoveReport]:
        hit = find_group(found.search.groups, wanted)
        if hit is None:
            raise HTTPException(404, f"no group {shown(wanted)} now: its members changed, or it was resolved")
        _, chosen = hit
        if chosen.keeper.image_id != keeper:
            raise HTTPException(409, f"the group's keeper is now {chosen.keeper.path}: look again, then resolve")
        try:
            return context.resolutions.resolve(context.served.index, chosen, wanted, destination)
        except MoveError as exc:
            raise HTTPException(409, " ".join(str(exc).split())) from None

    resolution, report = await acting_on_groups(context, settings, act)
    return {"resolution": resolution, "destination": destination, "group": wanted,
            "moved": len(report.moved), "copies": sum(record.copy for record in report.moved),
            "refused": [refusal.to_dict() for refusal in report.refused], "manifest": str(report.manifest),
            "unlocated": report.unlocated, "left_index": report.left_index}


@router.post("/undo")
async def undo(context: State, request: Request) -> dict[str, object]:
    """Undo a resolve (`{"resolution": id}`): its files back where they were, never overwriting, and back in the
    index (those whose vector the index no longer holds are indexed again), as `simsearch undo` does."""
    from indexer.adding import add_to_index
    from indexer.pipeline import IndexOptions

    body = await json_body(request)
    resolution = body.get("resolution") if isinstance(body, dict) else None
    if not isinstance(resolution, str) or not RESOLUTION_ID.fullmatch(resolution):
        raise HTTPException(422, 'send {"resolution": "<the id a resolve answered>"}')
    collection, _ = context.served.collection()
    index = context.served.index

    def restore() -> dict[str, object]:
        try:
            report = context.resolutions.undo(resolution, index)
        except MoveError as exc:
            raise HTTPException(404, " ".join(str(exc).split())) from None
        indexed_again = 0
        if report.to_index:
            summary = add_to_index(index, [Path(path) for path in report.to_index], collection.model,
                                   IndexOptions(workers=0))
            indexed_again = summary.added + summary.updated
        return {"resolution": resolution, "restored": len(report.restored),
                "already_back": len(report.already_back),
                "failed": [failure.to_dict() for failure in report.failed], "reindexed": report.reindexed,
                "indexed_again": indexed_again, "index_error": report.index_error}

    async with context.one_search_at_a_time:
        return await asyncio.to_thread(restore)


@router.get("/resolutions")
async def resolutions(context: State) -> list[dict[str, object]]:
    """The latest resolves made from the page, the latest first: where their files went, the manifest
    `simsearch undo` takes, how many of their files are still away (0: undone)."""
    return [made.to_dict() for made in await asyncio.to_thread(context.resolutions.recent)]


@router.get("/images")
async def images(context: State, ids: Annotated[str, Query(max_length=MAX_IDS * 20)]) -> dict[str, object]:
    """The facts of indexed images by id (`ids=3,17,42`), as a group's members have them; ids that are not
    indexed are left out."""
    try:
        wanted = [int(part) for part in ids.split(",") if part.strip()]
    except ValueError:
        raise HTTPException(422, "ids must be image ids separated by commas") from None
    if not wanted or len(wanted) > MAX_IDS or not all(0 <= image_id <= MAX_IMAGE_ID for image_id in wanted):
        raise HTTPException(422, f"ids must name 1 to {MAX_IDS} image ids")
    index = context.served.index

    def facts() -> dict[str, object]:
        root = display_root(row.path for row in index.indexed_images())
        rows = [(image_id, index.image_by_id(image_id)) for image_id in wanted]
        return {"root": root, "images": [
            member_view(Candidate(row.path, row.width, row.height, row.mtime_ns, image_id, row.file_id, row.size,
                                  row.content_hash), root)
            for image_id, row in rows if row is not None]}

    return await asyncio.to_thread(facts)
