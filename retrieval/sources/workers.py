"""Decode inputs in DataLoader worker processes, batch by batch, so that decoding overlaps inference."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from retrieval.sources.decode import Decoded, Source, SourceResult, decode_source
from retrieval.sources.images import Preprocessing


@dataclass(frozen=True)
class DecodedBatch:
    results: list[SourceResult]
    """Every input of the batch, in order; those with an error have no pixels."""
    pixels: torch.Tensor
    """uint8 (n_ok, H, W, C) for the inputs without error, in order."""

    def pin_memory(self) -> DecodedBatch:
        """A copy with the pixels in pinned memory: what the DataLoader's pinning thread calls (for a GPU)."""
        return dataclasses.replace(self, pixels=self.pixels.pin_memory())


class _SourceDataset(Dataset):
    def __init__(self, sources: Sequence[Source], prep: Preprocessing, max_pixels: int) -> None:
        self.sources = list(sources)
        self.prep = prep
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> Decoded:
        return decode_source(self.sources[i], self.prep, self.max_pixels)


def collate(samples: Sequence[Decoded]) -> DecodedBatch:
    """One batch of decoded inputs, their pixels stacked."""
    arrays = [pixels for _, pixels in samples if pixels is not None]
    stacked = torch.from_numpy(np.stack(arrays)) if arrays else torch.empty(0, dtype=torch.uint8)
    return DecodedBatch([result for result, _ in samples], stacked)


def _init_worker(_: int) -> None:
    torch.set_num_threads(1)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, as a container sets it), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_workers(cpu_inference: bool = True) -> int:
    """Decode processes (at least one, at most 8). With inference on a GPU, every core but the one that feeds it;
    on the CPU, half the cores, because decoding a camera JPEG and embedding it cost about the same CPU time
    (`benchmarks/index_throughput.py`) and inference takes the other half (`retrieval.sources.embed`)."""
    cores = available_cores()
    return max(1, min(8, cores // 2 if cpu_inference else cores - 1))


def decoding_loader(sources: Sequence[Source], prep: Preprocessing, *, batch_size: int, workers: int,
                    max_pixels: int, pin_memory: bool) -> DataLoader:
    """Batches (`DecodedBatch`) of `sources` in order, decoded by `workers` processes (0: in the iterating thread).
    Iterating it starts the workers."""
    return DataLoader(
        _SourceDataset(sources, prep, max_pixels), batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=collate, worker_init_fn=_init_worker if workers else None, pin_memory=pin_memory,
        prefetch_factor=4 if workers else None,
    )
