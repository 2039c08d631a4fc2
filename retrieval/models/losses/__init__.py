"""Metric-learning losses built from small parts, in the spirit of pytorch-metric-learning.

A distance (:func:`retrieval.vectors.distances.pairwise_squared_l2`) gives one in-batch matrix, a
miner (:mod:`retrieval.models.miners`) picks index tuples from it, a loss turns the tuples into
per-item losses and a reducer turns those into a scalar. This package module holds the
vocabulary the loss modules share; import the losses from their own modules:
:mod:`.triplet`, :mod:`.contrastive` and :mod:`.pairwise`.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from torch import Tensor

Reduction = Literal["mean", "nonzero"]


class LossOutput(NamedTuple):
    """A scalar loss plus how much of the batch actually contributed to it."""

    loss: Tensor
    active_fraction: float
    count: int


def reduce_losses(per_item: Tensor, active: Tensor, reduction: Reduction, anchor: Tensor) -> LossOutput:
    """Average ``per_item`` losses over all items (``"mean"``) or over the active ones (``"nonzero"``).

    ``anchor`` is any tensor of the graph; an empty batch yields ``0 * anchor.sum()`` so
    that ``backward()`` still works and gives zero gradients.
    """
    if reduction not in ("mean", "nonzero"):
        raise ValueError(f"unknown reduction {reduction!r}")
    count = per_item.numel()
    n_active = int(active.sum())
    if count == 0 or (reduction == "nonzero" and n_active == 0):
        return LossOutput(anchor.sum() * 0.0, 0.0, count)
    loss = per_item.mean() if reduction == "mean" else per_item[active].mean()
    return LossOutput(loss, n_active / count, count)
