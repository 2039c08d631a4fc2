"""Triplet margin loss on a precomputed squared-L2 distance matrix."""

from __future__ import annotations

from torch import Tensor, nn

from retrieval.models.losses import LossOutput, Reduction, reduce_losses
from retrieval.models.miners import Triplets


class TripletMarginLoss(nn.Module):
    """``max(d(a,p) - d(a,n) + margin, 0)`` per mined triplet.

    ``dist`` is expected to hold squared L2 distances between L2-normalised embeddings,
    so distances lie in [0, 4] and a margin of 0.1-0.5 is a sensible range. A triplet is
    active when its loss is non-zero.
    """

    def __init__(self, margin: float = 0.2, reduction: Reduction = "mean") -> None:
        super().__init__()
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.margin = margin
        self.reduction: Reduction = reduction

    def forward(self, dist: Tensor, triplets: Triplets) -> LossOutput:
        d_ap = dist[triplets.anchor, triplets.positive]
        d_an = dist[triplets.anchor, triplets.negative]
        per_triplet = (d_ap - d_an + self.margin).clamp_min(0.0)
        return reduce_losses(per_triplet, per_triplet > 0, self.reduction, anchor=dist)
