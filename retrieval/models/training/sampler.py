"""P classes x K images per batch, the sampling that in-batch mining needs."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class PKSampler:
    """Draws batches of indices: ``classes_per_batch`` classes, ``images_per_class`` images each.

    Classes are visited in a fresh random order on every pass, so all classes are seen
    equally often; images are drawn without replacement within a class when it has
    enough of them, with replacement otherwise. Deterministic for a given ``seed``.
    """

    def __init__(self, labels: Tensor, classes_per_batch: int, images_per_class: int, seed: int = 0) -> None:
        if classes_per_batch < 2 or images_per_class < 2:
            raise ValueError("need at least 2 classes per batch and 2 images per class for mining")
        labels_np = labels.cpu().numpy()
        classes, inverse = np.unique(labels_np, return_inverse=True)
        if len(classes) < classes_per_batch:
            raise ValueError(f"only {len(classes)} classes for batches of {classes_per_batch} classes")
        order = np.argsort(inverse, kind="stable")
        counts = np.bincount(inverse)
        self._members = np.split(order, np.cumsum(counts)[:-1])
        self.classes_per_batch = classes_per_batch
        self.images_per_class = images_per_class
        self._rng = np.random.default_rng(seed)
        self._queue: list[int] = []

    def _next_classes(self) -> list[int]:
        while len(self._queue) < self.classes_per_batch:
            fresh = self._rng.permutation(len(self._members)).tolist()
            pending = set(self._queue)
            self._queue.extend([c for c in fresh if c not in pending] + [c for c in fresh if c in pending])
        picked, self._queue = self._queue[: self.classes_per_batch], self._queue[self.classes_per_batch :]
        return picked

    def state_dict(self) -> dict[str, object]:
        """The random state and the classes still queued, so a resumed run draws the same batches."""
        return {"rng": self._rng.bit_generator.state, "queue": list(self._queue)}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self._rng.bit_generator.state = state["rng"]
        self._queue = list(state["queue"])  # type: ignore[call-overload]

    def next_batch(self) -> Tensor:
        """Indices of one batch, grouped by class (K consecutive entries per class)."""
        parts = []
        for cls in self._next_classes():
            members = self._members[cls]
            replace = len(members) < self.images_per_class
            parts.append(self._rng.choice(members, size=self.images_per_class, replace=replace))
        return torch.from_numpy(np.concatenate(parts)).long()
