"""Koch et al. (2015) siamese head: ``sigmoid(w . |h1 - h2| + b)`` trained with binary cross-entropy."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from retrieval.models.losses import LossOutput, Reduction, reduce_losses
from retrieval.models.miners import Pairs
from retrieval.models.pair_head import PairwiseHead


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
