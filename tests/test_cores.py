"""How decoding and inference share the CPU: threads beside the decode workers, memory kept between batches."""

from __future__ import annotations

import platform
import sys

import pytest
import torch

from indexer import inference, loading
from indexer.inference import InferenceThreads
from retrieval.allocator import keep_freed_memory


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


def test_freed_memory_is_kept_where_the_c_library_is_glibc() -> None:
    on_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is on_glibc
