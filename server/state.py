"""What every route of one server shares, and the FastAPI dependency that hands it to a route.

`create_app` makes one `ServerState` and keeps it on the app; a route declares a parameter of type `State` and
FastAPI passes it in (`Depends(server_state)`), so no route is a closure over `create_app`'s locals and each can be
read, and tested, on its own.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request

from retrieval.collection import Collection
from retrieval.errors import IndexNotFoundError
from retrieval.index import SimilarityIndex, open_index
from retrieval.sources.images import DEFAULT_MAX_PIXELS
from server.batching import MAX_BATCH, WINDOW_SECONDS, EmbedBatcher
from server.resolutions import Resolutions

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


class Served:
    """The index and the collection over it, made anew when the index's model changes under the server; and
    `reader`, a collection over the index that loads no model, for what its stored vectors answer (also while it
    holds no images)."""

    def __init__(self, root: Path, db: str | None, device: str | None, limits: Limits) -> None:
        self.root, self.device, self.limits = root, device, limits
        self.index: SimilarityIndex = open_index(root, db)
        self.reader = Collection(self.index, None, device)
        self._collection: Collection | None = None
        self._batcher: EmbedBatcher | None = None
        self._lock = threading.Lock()

    def collection(self) -> tuple[Collection, EmbedBatcher]:
        """The collection over the index's model now, and the batcher of uploads onto that model;
        `IndexNotFoundError` while the index holds no images."""
        with self._lock:
            served = self.index.served_model()
            if served is None:
                raise IndexNotFoundError(f"the index at {self.root} holds no images yet")
            if self._collection is None or self._collection.model.content_hash != served.content_hash:
                self._collection = Collection(self.index, None, self.device)
                self._batcher = EmbedBatcher(self._collection.embedder, self._collection.model.preprocessing,
                                             self.limits.max_pixels,
                                             self.limits.batch_window, self.limits.max_batch)
            assert self._batcher is not None
            return self._collection, self._batcher

    async def close(self) -> None:
        """Stop the batcher's worker (the app's shutdown)."""
        if self._batcher is not None:
            await self._batcher.close()


@dataclass(frozen=True)
class ServerState:
    """The index served, the server's limits, the lock that lets one duplicate search (or resolve, or undo) run
    at a time, and the page's resolves."""

    served: Served
    limits: Limits
    one_search_at_a_time: asyncio.Lock
    resolutions: Resolutions


def server_state(request: Request) -> ServerState:
    """The state of the app that received `request` (a FastAPI dependency)."""
    state: ServerState = request.app.state.server
    return state


State = Annotated[ServerState, Depends(server_state)]
"""A route's parameter of this type receives the server's state."""
