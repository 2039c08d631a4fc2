"""Concurrent embedding requests share one model: each waits a moment for others, and they run as one batch.

A batch is 1 to `MAX_BATCH` uploads already in memory: each is decoded with the model's preprocessing and the
decoded ones are embedded by one `Embedder` call, in the batcher's thread. No decode workers, no read-ahead, no
content hash (nothing is stored), and torch's thread settings are left as the process has them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from retrieval.errors import DecodeError
from retrieval.models.embedding import Embedder
from retrieval.sources.images import Preprocessing, decode_image

WINDOW_SECONDS = 0.005
"""How long the first request of a batch waits for others: a few milliseconds against a 10-60 ms model run."""
MAX_BATCH = 32
BATCHES_KEPT = 1000


@dataclass(frozen=True)
class Embedded:
    """One upload's L2-normalised float32 vector, or why it has none (it does not decode)."""

    vector: np.ndarray | None = None
    error: str | None = None


def embed_uploads(embedder: Embedder, prep: Preprocessing, uploads: list[bytes], max_pixels: int) -> list[Embedded]:
    """Each encoded image's embedding, in order: decoded one by one, the decoded ones embedded in one call;
    `ModelError` (from the embedder) reaches the caller."""
    decoded: list[np.ndarray | DecodeError] = []
    for data in uploads:
        try:
            decoded.append(decode_image(data, prep, max_pixels).pixels)
        except DecodeError as exc:
            decoded.append(exc)
    pixels = [item for item in decoded if isinstance(item, np.ndarray)]
    vectors = iter(embedder.embed(torch.from_numpy(np.stack(pixels))) if pixels else ())
    return [Embedded(error=str(item)) if isinstance(item, DecodeError) else Embedded(vector=next(vectors))
            for item in decoded]


@dataclass
class _Waiting:
    data: bytes
    done: asyncio.Future[Embedded] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class EmbedBatcher:
    """Embeds encoded images for async callers, batching those that arrive within `window` seconds (at most
    `max_batch`), one batch at a time on the model, in a thread of its own so the event loop keeps serving."""

    def __init__(self, embedder: Embedder, prep: Preprocessing, max_pixels: int, window: float = WINDOW_SECONDS,
                 max_batch: int = MAX_BATCH) -> None:
        self.embedder = embedder
        self.prep = prep
        self.max_pixels = max_pixels
        self.window = window
        self.max_batch = max_batch
        self.batch_sizes: deque[int] = deque(maxlen=BATCHES_KEPT)
        """The sizes of the latest batches (what batching achieves, for a look or a test)."""
        self._queue: asyncio.Queue[_Waiting] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="simsearch-embed")

    async def embed(self, data: bytes) -> Embedded:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run())
        waiting = _Waiting(data)
        await self._queue.put(waiting)
        return await waiting.done

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.window
            while len(batch) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            self.batch_sizes.append(len(batch))
            try:
                results = await loop.run_in_executor(self._thread, lambda: embed_uploads(
                    self.embedder, self.prep, [waiting.data for waiting in batch], self.max_pixels))
            except Exception as exc:  # a model error reaches every request of the batch, as its own error
                for waiting in batch:
                    if not waiting.done.done():
                        waiting.done.set_exception(exc)
                continue
            for waiting, result in zip(batch, results, strict=True):
                if not waiting.done.done():
                    waiting.done.set_result(result)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._thread.shutdown(wait=False)
