"""Decode the first files in a process of their own while torch and the model are still loading."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from types import TracebackType

from retrieval.sources.decode import Decoded, Source, decode_source
from retrieval.sources.images import Preprocessing

MAX_FILES = 1000
"""Files offered to the head start at most: several times what one process decodes while torch loads, and a short
list to send where the process is spawned rather than forked."""
_PARENT_CHECK_SECONDS = 1.0
_STOP_SECONDS = 5.0


class HeadStart:
    """Decodes the first of `sources` in order from the moment it is made until `take` is called, in one process
    that needs neither torch nor the model.

    DataLoader workers can start only once torch is imported, and importing it and loading a model takes
    seconds (3 to 4 on the 2-core benchmark machines, where decoding 500 camera photos takes 12). This process
    starts with the run; `take` stops it and returns the files it decoded, always a prefix of `sources`, and the
    DataLoader decodes the rest. Leaving the `with` block stops the process if `take` was never called; the
    process also stops by itself when its parent dies.
    """

    def __init__(self, sources: Sequence[Source], prep: Preprocessing, max_pixels: int) -> None:
        context = multiprocessing.get_context()
        self._stop = context.Event()
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(target=_decode_until_taken, name="simsearch-head-start", daemon=True,
                                        args=(list(sources[:MAX_FILES]), prep, max_pixels, self._stop, send))
        self._process.start()
        send.close()

    def __enter__(self) -> HeadStart:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(_STOP_SECONDS)
            if self._process.is_alive():
                self._process.kill()
        self._process.join()
        self._receive.close()

    def take(self) -> list[Decoded]:
        """Stop decoding; the files decoded so far, in order (none if the process failed)."""
        self._stop.set()
        try:
            decoded: list[Decoded] = self._receive.recv()
        except EOFError:
            decoded = []
        self._process.join()
        return decoded


def _decode_until_taken(sources: list[Source], prep: Preprocessing, max_pixels: int, stop: Event,
                        send: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops this process
    parent = multiprocessing.parent_process()
    decoded = []
    for source in sources:
        if stop.is_set() or (parent is not None and not parent.is_alive()):
            break
        decoded.append(decode_source(source, prep, max_pixels))
    while not stop.wait(_PARENT_CHECK_SECONDS):
        if parent is not None and not parent.is_alive():
            os._exit(0)
    send.send(decoded)
    os._exit(0)  # the parent has everything; a spawned interpreter's teardown would only delay its join
