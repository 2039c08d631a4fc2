"""Koch et al. (2015) siamese head: ``sigmoid(w . |h1 - h2| + b)`` trained with binary cross-entropy."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from retrieval.losses import LossOutput, Reduction, reduce_losses
from retrieval.miners import Pairs


class PairwiseHead(nn.Module):
    """Scores whether two embeddings show the same class.

    The absolute difference makes the score symmetric in its two inputs, so ``(a, b)``
    and ``(b, a)`` get the same answer; with a signed difference the two orders pull the
    weights in opposite directions. Identical inputs give ``|h1 - h2| = 0`` and so score
    exactly ``sigmoid(b)``: without the bias the head could never call them "same".
    """

    def __init__(self, embedding_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(embedding_dim, 1, bias=True)

    def forward(self, first: Tensor, second: Tensor) -> Tensor:
        """Logits (before the sigmoid), shape (N,)."""
        return self.linear((first - second).abs()).squeeze(-1)

    @torch.no_grad()
    def score(self, first: Tensor, second: Tensor) -> Tensor:
        """Probability that each pair is the same class, shape (N,)."""
        return torch.sigmoid(self.forward(first, second))


class PairwiseBCELoss(nn.Module):
    """Binary cross-entropy of a :class:`PairwiseHead` on mined pairs.

    BCE is never exactly zero, so a pair counts as active when the head puts it on the
    wrong side of 0.5 (its loss exceeds ``log 2``).
    """

    def __init__(self, embedding_dim: int, reduction: Reduction = "mean") -> None:
        super().__init__()
        self.head = PairwiseHead(embedding_dim)
        self.reduction: Reduction = reduction

    def forward(self, embeddings: Tensor, pairs: Pairs) -> LossOutput:
        logits = self.head(embeddings[pairs.first], embeddings[pairs.second])
        target = pairs.same.to(logits.dtype)
        per_pair = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        wrong = (logits > 0) != pairs.same
        return reduce_losses(per_pair, wrong, self.reduction, anchor=embeddings)
