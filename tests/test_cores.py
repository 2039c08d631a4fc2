"""How decoding and inference share the CPU: threads beside the decode workers, memory kept between batches."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from retrieval.sources import embed as inference
from retrieval.sources import workers as loading
from retrieval.sources.embed import InferenceThreads


def test_inference_gets_the_cores_the_decode_workers_leave(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.setattr(loading, "available_cores", lambda: 4)
    monkeypatch.setattr(inference, "available_cores", lambda: 4)
    assert loading.default_workers() == 2, "on the CPU, decoding and inference take half the cores each"
    assert loading.default_workers(cpu_inference=False) == 3, "a GPU needs one core to feed it"
    with InferenceThreads(1) as threads:
        assert torch.get_num_threads() == 3
        threads.decoding_finished()
        assert torch.get_num_threads() == before, "every core torch would use once decoding is done"
    with InferenceThreads(8):
        assert torch.get_num_threads() == 1, "at least one thread, however many workers"
    assert torch.get_num_threads() == before


RESIDENT_AFTER_FREE = """
import ctypes, os, sys
if sys.argv[1] == "keep":
    from retrieval.models.allocator import keep_freed_memory
    assert keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 256 << 20
block = libc.malloc(size)
ctypes.memset(block, 1, size)  # touch every page, as a batch's activations are
libc.free(block)
pages = int(open("/proc/self/statm").read().split()[1])
print(pages * os.sysconf("SC_PAGE_SIZE") >> 20)
"""


@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"),
                    reason="the allocator is tuned on glibc only")
def test_a_freed_batch_stays_in_the_process_for_the_next() -> None:
    """What the tuning is for: 256 MB that a batch frees stay resident (no page faults to get them back), where
    glibc left to itself hands them back to the system at once."""
    def resident_mb(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", RESIDENT_AFTER_FREE, mode], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
        return int(done.stdout)

    assert resident_mb("keep") - resident_mb("default") > 200
