"""Concurrent embedding requests share one model: each waits a moment for others, and they run as one batch."""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from retrieval.embedding import Embedder
from retrieval.sources.decode import SourceResult
from retrieval.sources.embed import embed_sources

WINDOW_SECONDS = 0.005
"""How long the first request of a batch waits for others: a few milliseconds against a 10-60 ms model run."""
MAX_BATCH = 32
BATCHES_KEPT = 1000


@dataclass
class _Waiting:
    data: bytes
    done: asyncio.Future[SourceResult] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class EmbedBatcher:
    """Embeds encoded images for async callers, batching those that arrive within `window` seconds (at most
    `max_batch`), one batch at a time on the model, in a thread of its own so the event loop keeps serving."""

    def __init__(self, embedder: Embedder, max_pixels: int, window: float = WINDOW_SECONDS,
                 max_batch: int = MAX_BATCH) -> None:
        self.embedder = embedder
        self.max_pixels = max_pixels
        self.window = window
        self.max_batch = max_batch
        self.batch_sizes: deque[int] = deque(maxlen=BATCHES_KEPT)
        """The sizes of the latest batches (what batching achieves, for a look or a test)."""
        self._queue: asyncio.Queue[_Waiting] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="simsearch-embed")

    async def embed(self, data: bytes) -> SourceResult:
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
                results = await loop.run_in_executor(self._thread, lambda: embed_sources(
                    self.embedder, [waiting.data for waiting in batch], self.max_pixels, batch_size=self.max_batch))
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
