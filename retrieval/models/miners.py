"""Pick triplets or pairs from one in-batch distance matrix.

Every triplet miner takes the (B, B) distance matrix and the (B,) integer labels of a
batch and returns indices into the batch; it never builds a second distance matrix and
never takes part in the gradient.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
from torch import Tensor


class Triplets(NamedTuple):
    """Batch indices of anchors, positives (same label) and negatives (other label)."""

    anchor: Tensor
    positive: Tensor
    negative: Tensor


class Pairs(NamedTuple):
    """Batch indices of two pair members and whether they share a label."""

    first: Tensor
    second: Tensor
    same: Tensor


class TripletMiner(Protocol):
    def __call__(self, dist: Tensor, labels: Tensor) -> Triplets: ...


def label_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Boolean (B, B) masks of positive pairs (same label, not the diagonal) and negative pairs."""
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def _empty_triplets(device: torch.device) -> Triplets:
    empty = torch.empty(0, dtype=torch.long, device=device)
    return Triplets(empty, empty, empty)


class RandomTripletMiner:
    """Every anchor-positive pair, each with one negative drawn uniformly at random."""

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, dist: Tensor, labels: Tensor) -> Triplets:
        positive, negative = (mask.cpu() for mask in label_masks(labels))
        anchor_idx, positive_idx = positive.nonzero(as_tuple=True)
        keep = negative[anchor_idx].any(dim=1)
        anchor_idx, positive_idx = anchor_idx[keep], positive_idx[keep]
        if anchor_idx.numel() == 0:
            return _empty_triplets(dist.device)
        weights = negative[anchor_idx].float()
        negative_idx = torch.multinomial(weights, 1, generator=self.generator).squeeze(1)
        return Triplets(*(t.to(dist.device) for t in (anchor_idx, positive_idx, negative_idx)))


class SemiHardMiner:
    """FaceNet's semi-hard negatives (Schroff et al. 2015).

    For every anchor-positive pair, the closest negative that is still farther from the
    anchor than the positive (``d(a,p) < d(a,n)``); it lies inside the margin band when
    one exists there. Pairs with no such negative are dropped: their only negatives are
    harder than the positive, and pulling those early is what collapses embeddings.
    """

    def __call__(self, dist: Tensor, labels: Tensor) -> Triplets:
        dist = dist.detach()
        positive, negative = label_masks(labels)
        anchor_idx, positive_idx = positive.nonzero(as_tuple=True)
        if anchor_idx.numel() == 0:
            return _empty_triplets(dist.device)
        d_ap = dist[anchor_idx, positive_idx].unsqueeze(1)
        rows = dist[anchor_idx]
        candidates = negative[anchor_idx] & (rows > d_ap)
        masked = rows.masked_fill(~candidates, float("inf"))
        negative_idx = masked.argmin(dim=1)
        keep = candidates.any(dim=1)
        return Triplets(anchor_idx[keep], positive_idx[keep], negative_idx[keep])


class BatchHardMiner:
    """Hermans et al. 2017: per anchor, its farthest positive and its closest negative."""

    def __call__(self, dist: Tensor, labels: Tensor) -> Triplets:
        dist = dist.detach()
        positive, negative = label_masks(labels)
        keep = positive.any(dim=1) & negative.any(dim=1)
        anchor_idx = keep.nonzero(as_tuple=True)[0]
        hardest_positive = dist.masked_fill(~positive, float("-inf")).argmax(dim=1)
        hardest_negative = dist.masked_fill(~negative, float("inf")).argmin(dim=1)
        return Triplets(anchor_idx, hardest_positive[anchor_idx], hardest_negative[anchor_idx])


class BalancedPairMiner:
    """All positive pairs ``i < j`` of the batch plus as many negative pairs drawn at random (50/50).

    Random sampling needs no distances, so this miner takes only the labels.
    """

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, labels: Tensor) -> Pairs:
        positive, negative = (torch.triu(mask.cpu(), diagonal=1) for mask in label_masks(labels))
        pos_first, pos_second = positive.nonzero(as_tuple=True)
        neg_first, neg_second = negative.nonzero(as_tuple=True)
        n = min(pos_first.numel(), neg_first.numel())
        pos_pick = torch.randperm(pos_first.numel(), generator=self.generator)[:n]
        neg_pick = torch.randperm(neg_first.numel(), generator=self.generator)[:n]
        first = torch.cat([pos_first[pos_pick], neg_first[neg_pick]])
        second = torch.cat([pos_second[pos_pick], neg_second[neg_pick]])
        same = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)])
        return Pairs(*(t.to(labels.device) for t in (first, second, same)))
