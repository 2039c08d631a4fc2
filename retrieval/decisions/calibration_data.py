"""The same and the different pairs of the data `simsearch calibrate` is given, as distances under a model.

The data is a folder of class subfolders (pairs sampled with `retrieval.decisions.calibration.sample_calibration_pairs`)
or a CSV of labelled pairs (`retrieval.sources.pairs`). It lives beside the labelled-folder reader rather than in
`retrieval/` because it scans folders, which is this layer's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.decisions.calibration import sample_calibration_pairs
from retrieval.errors import InputPathError
from retrieval.models.embedding import Embedder
from retrieval.report import Reporter
from retrieval.sources.embed import embed_files
from retrieval.sources.labelled import embed_labelled_folder
from retrieval.sources.pairs import read_pairs_csv
from retrieval.vectors.unit_distance import paired_distances


@dataclass(frozen=True)
class PairDistances:
    """Squared L2 distances of the same pairs and of the different pairs."""

    same: np.ndarray
    different: np.ndarray


def calibration_distances(data: Path, embedder: Embedder, *, negatives: int | None = None, seed: int = 0,
                          workers: int | None = None, reporter: Reporter | None = None) -> PairDistances:
    """Embed `data` and measure its pairs. A folder yields every same-class pair it can (bounded) and `negatives`
    different ones (default: as many, at least 1000); a CSV yields its own pairs, each file embedded once.
    `InputPathError` for data that is neither, `DecodeError` naming a CSV's file that does not decode."""
    if data.is_file():
        pairs = read_pairs_csv(data)
        vectors = embed_files(embedder, pairs.files)
        first, second, same = np.array(pairs.first), np.array(pairs.second), np.array(pairs.same)
    elif data.is_dir():
        found = embed_labelled_folder(embedder, data, workers=workers, reporter=reporter)
        vectors = found.embeddings
        first, second, same = sample_calibration_pairs(found.labels, negatives, seed)
    else:
        raise InputPathError(f"no such file or directory: {data}")
    distances = paired_distances(vectors[first], vectors[second])
    return PairDistances(distances[same], distances[~same])
