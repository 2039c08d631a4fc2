"""The pairwise head a model file may carry (Koch et al. 2015): ``sigmoid(w . |h1 - h2| + b)`` on two embeddings.

It is part of the saved model (`verify` reports its probability), so it lives beside the model; the loss that
trains it is `retrieval.models.losses.pairwise.PairwiseBCELoss`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


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
