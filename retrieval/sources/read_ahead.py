"""Read an iterator ahead of its consumer, in a background thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")

_ITEM, _END, _ERROR = range(3)
_POLL_SECONDS = 0.1


class ReadAhead(Generic[T]):
    """Iterate `source` in a thread, holding up to `depth` items the consumer has not taken yet.

    A DataLoader keeps only `prefetch_factor` batches per worker in flight, so while inference is slower than
    decoding, its workers sit idle. Reading ahead keeps them decoding, and `exhausted` tells the consumer when
    the source is done (every file decoded), so that inference can take the cores the workers leave. `keep` is
    applied to each item in the thread (to copy it out of shared memory, say). Use it as a context manager:
    leaving the block stops the thread, also when the consumer stops early; an exception of the source is
    raised in the consumer.
    """

    def __init__(self, source: Iterator[T], depth: int, keep: Callable[[T], T] | None = None) -> None:
        self._queue: queue.Queue[tuple[int, object]] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._exhausted = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(source, keep), name="read-ahead", daemon=True)

    def __enter__(self) -> ReadAhead[T]:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        # Leaving on an exception (Ctrl-C, say), the thread may be waiting on a source that will not answer for
        # seconds (a DataLoader whose workers were interrupted notices after 5 s); it is a daemon, so let it go.
        self._thread.join(None if kind is None else _POLL_SECONDS)

    @property
    def exhausted(self) -> bool:
        """Whether the source has given its last item (the consumer may still have some to take)."""
        return self._exhausted.is_set()

    def __iter__(self) -> Iterator[T]:
        while True:
            kind, value = self._queue.get()
            if kind == _END:
                return
            if kind == _ERROR:
                assert isinstance(value, BaseException)
                raise value
            yield value  # type: ignore[misc]

    def _read(self, source: Iterator[T], keep: Callable[[T], T] | None) -> None:
        try:
            for item in source:
                if not self._put(_ITEM, keep(item) if keep else item):
                    return
            self._exhausted.set()
            self._put(_END, None)
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(_ERROR, exc)

    def _put(self, kind: int, value: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put((kind, value), timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False
