"""Read, hash and decode files in DataLoader worker processes, so decoding overlaps inference."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from indexer.decoding import Decoded, Loaded, load_file
from indexer.plan import Work
from retrieval.images import Preprocessing


@dataclass(frozen=True)
class LoadedBatch:
    items: list[Loaded]
    pixels: torch.Tensor
    """uint8 (n_ok, H, W, C) for the items without error, in order."""

    @property
    def ok(self) -> list[Loaded]:
        return [item for item in self.items if item.error is None]

    def pin_memory(self) -> LoadedBatch:
        """A copy with the pixels in pinned memory: what the DataLoader's pinning thread calls (for a GPU)."""
        return dataclasses.replace(self, pixels=self.pixels.pin_memory())


class FileDataset(Dataset):
    def __init__(self, works: Sequence[Work], prep: Preprocessing, max_pixels: int) -> None:
        self.works = list(works)
        self.prep = prep
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.works)

    def __getitem__(self, i: int) -> Decoded:
        return load_file(self.works[i], self.prep, self.max_pixels)


def collate(samples: Sequence[Decoded]) -> LoadedBatch:
    """One batch of decoded files, their pixels stacked."""
    arrays = [pixels for _, pixels in samples if pixels is not None]
    stacked = torch.from_numpy(np.stack(arrays)) if arrays else torch.empty(0, dtype=torch.uint8)
    return LoadedBatch([item for item, _ in samples], stacked)


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
    (`benchmarks/index_throughput.py`) and inference takes the other half (`indexer.inference`)."""
    cores = available_cores()
    return max(1, min(8, cores // 2 if cpu_inference else cores - 1))


def make_loader(works: Sequence[Work], prep: Preprocessing, *, batch_size: int, workers: int,
                max_pixels: int, pin_memory: bool) -> DataLoader:
    return DataLoader(
        FileDataset(works, prep, max_pixels), batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=collate, worker_init_fn=_init_worker if workers else None, pin_memory=pin_memory,
        prefetch_factor=4 if workers else None,
    )
