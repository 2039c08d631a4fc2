"""Few-shot classification against a support set: nearest support image, or nearest class mean."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrieval.decisions.pixel_rule import PixelJudgement
from retrieval.vectors.unit_distance import DISTANCE_DIGITS, pairwise_distances


@dataclass(frozen=True)
class Classification:
    """The nearest class of one query; `label` is None ("unknown") when it lies beyond the threshold, or when it
    was judged on pixels (`pixels`: the query or the deciding support image is tiny or flat) and they differ."""

    query: str
    label: str | None
    nearest_label: str | None
    distance: float | None
    nearest_support: str | None
    """The support image that decided (None with class means)."""
    error: str | None = None
    pixels: PixelJudgement | None = None

    def to_dict(self) -> dict[str, object]:
        return {"query": self.query, "label": self.label, "nearest_label": self.nearest_label,
                "distance": None if self.distance is None else round(self.distance, DISTANCE_DIGITS),
                "nearest_support": self.nearest_support,
                **({"pixels": self.pixels.to_dict()} if self.pixels is not None else {}),
                **({"error": self.error} if self.error else {})}


def nearest_classes(queries: np.ndarray, support: np.ndarray, support_labels: np.ndarray, prototype: bool
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each query row: the class index, the squared L2 distance, and the deciding support row (-1 with
    `prototype`, where a class is the L2-normalised mean of its support embeddings)."""
    if prototype:
        classes = int(support_labels.max()) + 1
        means = np.zeros((classes, support.shape[1]), dtype=np.float64)
        np.add.at(means, support_labels, support)
        means /= np.linalg.norm(means, axis=1, keepdims=True)
        distances = pairwise_distances(queries, means)
        best = distances.argmin(axis=1)
        return best, distances[np.arange(len(queries)), best], np.full(len(queries), -1)
    distances = pairwise_distances(queries, support)
    nearest = distances.argmin(axis=1)
    return support_labels[nearest], distances[np.arange(len(queries)), nearest], nearest
