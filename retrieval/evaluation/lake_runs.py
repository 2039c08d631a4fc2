"""Lake's one-shot runs (`all_runs.zip`) scored under an embedder, as `simsearch eval MODEL all_runs.zip` does:
each image decoded with the model's own preprocessing, then `lake_oneshot_accuracy`."""

from __future__ import annotations

from pathlib import Path

import torch

from retrieval.datasets.omniglot import read_lake_runs
from retrieval.evaluation.lake import lake_oneshot_accuracy
from retrieval.evaluation.stats import Estimate
from retrieval.models.embedding import Embedder
from retrieval.sources.images import decode_image


def lake_runs_accuracy(embedder: Embedder, runs_zip: Path) -> Estimate:
    """The 20-way within-alphabet one-shot accuracy of `embedder`'s model over the 400 trials of `runs_zip`: each
    query image against the 20 support images of its run."""
    prep = embedder.model.preprocessing
    runs = read_lake_runs(runs_zip, lambda png: decode_image(png, prep).pixels)
    return lake_oneshot_accuracy(lambda images: torch.from_numpy(embedder.embed(images)), runs)
