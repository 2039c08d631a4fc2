"""In-batch distance matrices shared by the losses, miners and evaluation."""

from __future__ import annotations

import torch
from torch import Tensor


def pairwise_squared_l2(x: Tensor, y: Tensor | None = None) -> Tensor:
    """Squared Euclidean distances between the rows of ``x`` (N, D) and ``y`` (M, D).

    Uses the expansion ``|x|^2 + |y|^2 - 2 x.y`` (one matrix product, so one distance
    matrix serves both mining and the loss). Rounding can make that expansion slightly
    negative, so it is clamped at zero; when ``y`` is omitted the diagonal is set to an
    exact zero. No square root is taken, so the gradient stays finite at zero distance.
    """
    if x.dim() != 2:
        raise ValueError(f"expected a (N, D) tensor, got shape {tuple(x.shape)}")
    other = x if y is None else y
    if other.dim() != 2 or other.shape[1] != x.shape[1]:
        raise ValueError(f"shapes {tuple(x.shape)} and {tuple(other.shape)} do not match")
    x_sq = x.pow(2).sum(dim=1, keepdim=True)
    y_sq = other.pow(2).sum(dim=1).unsqueeze(0)
    dist = (x_sq + y_sq - 2.0 * x @ other.T).clamp_min(0.0)
    if y is None:
        dist = dist * (1.0 - torch.eye(x.shape[0], dtype=x.dtype, device=x.device))
    return dist
