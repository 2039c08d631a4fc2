"""MNIST-style IDX files (gzipped), as Fashion-MNIST and MNIST ship them."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from retrieval.datasets.omniglot import DatasetFormatError, DatasetNotFoundError

_UBYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """The uint8 array of an IDX file: (N,) for labels, (N, rows, cols) for images."""
    if not path.is_file():
        raise DatasetNotFoundError(f"{path} not found")
    with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _UBYTE:
        raise DatasetFormatError(f"{path} is not an unsigned-byte IDX file")
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise DatasetFormatError(f"{path}: {body.size} bytes for shape {shape}")
    return body.reshape(shape)
