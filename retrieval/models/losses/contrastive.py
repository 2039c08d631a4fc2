"""Contrastive loss of Hadsell, Chopra and LeCun (2006) on mined pairs."""

from __future__ import annotations

from torch import Tensor, nn

from retrieval.models.losses import LossOutput, Reduction, reduce_losses
from retrieval.models.miners import Pairs

_SQRT_EPS = 1e-12


class ContrastiveLoss(nn.Module):
    """``d^2 / 2`` for similar pairs and ``max(margin - d, 0)^2 / 2`` for dissimilar pairs.

    ``dist`` holds squared L2 distances; ``d`` is its square root, taken with a small
    floor so the gradient stays finite for coincident embeddings. ``margin`` is on the
    plain (not squared) distance, in [0, 2] for L2-normalised embeddings. A pair is
    active when its loss is non-zero.
    """

    def __init__(self, margin: float = 1.0, reduction: Reduction = "mean") -> None:
        super().__init__()
        if margin <= 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        self.margin = margin
        self.reduction: Reduction = reduction

    def forward(self, dist: Tensor, pairs: Pairs) -> LossOutput:
        d_sq = dist[pairs.first, pairs.second]
        d = d_sq.clamp_min(_SQRT_EPS).sqrt()
        per_pair = 0.5 * d_sq.where(pairs.same, (self.margin - d).clamp_min(0.0).pow(2))
        return reduce_losses(per_pair, per_pair > 0, self.reduction, anchor=dist)
