"""Keep the memory that inference frees inside the process, for the next batch.

glibc serves every allocation above its mmap threshold (at most 32 MiB unless told otherwise) with a fresh
mapping and unmaps it on free, and trims the heap top back to the OS. A CNN's activations for a batch are far
above that threshold, so every layer of every batch page-faults its output memory in again, and zero-filling
new pages costs more than some of the convolutions. Serving allocations up to 1 GiB from the heap and never
trimming it lets each batch reuse the last one's memory: on the 2-core machines of `benchmarks/` EfficientNet-Lite0
embeds about 1.8 times as many images a second. The price is that the process keeps its peak heap until it
exits, as PyTorch's CUDA caching allocator does with GPU memory.

That holds for the main thread's heap. A thread other than the main one allocates from an arena of its own,
made of heaps of at most 64 MiB: a larger buffer is mapped afresh for every batch, and heaps are made and unmapped
as a batch's buffers come and go, whatever the settings above (20 times the page faults of the main thread, 37,600
against 1,900 a batch of 32). Embedding there ran a fifth slower: 13.1 against 10.6 ms an image for the default
model on one thread of a Ray model actor, timed with `time.thread_time` around its calls. A process that embeds
on such a thread (a Ray Data model actor runs its calls on one) is started with `ONE_ARENA` in its environment,
so that every thread allocates from the main heap: a thread that is already attached to an arena keeps it.
"""

from __future__ import annotations

import ctypes
import functools
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_HEAP_UP_TO = 1 << 30
_NEVER_TRIM = (1 << 31) - 1
ONE_ARENA = {"MALLOC_ARENA_MAX": "1"}
"""Every thread allocates from the main heap, which `keep_freed_memory` tunes."""


@functools.cache
def keep_freed_memory() -> bool:
    """Tune glibc's malloc as described above, once per process; returns False (and changes nothing) where it is
    not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _HEAP_UP_TO)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
