"""Near-duplicate groups of the whole index, a page at a time (/api/duplicates), as `simsearch dedup` finds them."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, HTTPException

from retrieval.decisions.keeper_rules import DEFAULT_RULES
from retrieval.vectors.unit_distance import with_similarity
from server.bodies import require_proof, threshold_value
from server.state import State

router = APIRouter(prefix="/api", tags=["duplicates"])


@router.get("/duplicates", dependencies=[Depends(require_proof)])
async def duplicates(state: State, threshold: float | None = None, precision: float | None = None, page: int = 1,
                     per_page: int = 50, keep: str = DEFAULT_RULES, reference: str | None = None,
                     lookalikes: bool = False) -> object:
    """Near-duplicate groups, largest first, a page at a time, with the threshold used and how the pairs were
    found; `keep` and `reference` as `simsearch dedup` takes them; "not duplicates" decisions honoured.
    Needs the header `X-Simsearch-Request` (no cross-site `<img>` can start the work); a threshold that finds
    more close pairs than the server's bound is a 422 (lower it). `lookalikes` (the flag of the answer) says
    whether the collection looks like one of look-alikes, where only exact copies are grouped unless
    `lookalikes=true` is asked; the cosine similarity is beside each distance."""
    limits = state.limits
    if page < 1 or not 1 <= per_page <= limits.max_page:
        raise HTTPException(422, f"page must be 1 or more and per_page 1 to {limits.max_page}")
    collection, _ = state.served.collection()
    choice = collection.threshold_choice(threshold_value(threshold), precision)
    async with state.one_search_at_a_time:  # one search's memory at a time, and the event loop keeps answering
        found = await asyncio.to_thread(collection.find_duplicates, choice.threshold, keep=keep,
                                        reference=reference, max_pairs=limits.max_duplicate_pairs,
                                        lookalikes=lookalikes)
    start = (page - 1) * per_page
    return with_similarity({**choice.to_dict(), "pairs": found.pairs.to_dict(),
                            "lookalikes": found.lookalikes.to_dict(), "page": page, "per_page": per_page,
                            "total": len(found.groups),
                            "groups": [group.to_dict() for group in found.groups[start:start + per_page]]})
