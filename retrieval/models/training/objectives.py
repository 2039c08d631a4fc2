"""Training objectives: L2-normalise embeddings, build one distance matrix, mine, apply a loss."""

from __future__ import annotations

from typing import Literal, get_args

from torch import Tensor, nn
from torch.nn import functional as F

from retrieval.models.losses import LossOutput
from retrieval.models.losses.contrastive import ContrastiveLoss
from retrieval.models.losses.pairwise import PairwiseBCELoss
from retrieval.models.losses.triplet import TripletMarginLoss
from retrieval.models.miners import BalancedPairMiner, BatchHardMiner, RandomTripletMiner, SemiHardMiner, TripletMiner
from retrieval.vectors.distances import pairwise_squared_l2

LossName = Literal["triplet", "contrastive", "pairwise"]
MiningName = Literal["random", "semihard", "batchhard"]
LOSSES: tuple[str, ...] = get_args(LossName)
MININGS: tuple[str, ...] = get_args(MiningName)


class TripletObjective(nn.Module):
    def __init__(self, miner: TripletMiner, loss: TripletMarginLoss) -> None:
        super().__init__()
        self.miner = miner
        self.loss = loss

    def forward(self, embeddings: Tensor, labels: Tensor) -> LossOutput:
        dist = pairwise_squared_l2(F.normalize(embeddings, dim=1))
        return self.loss(dist, self.miner(dist, labels))


class ContrastiveObjective(nn.Module):
    def __init__(self, miner: BalancedPairMiner, loss: ContrastiveLoss) -> None:
        super().__init__()
        self.miner = miner
        self.loss = loss

    def forward(self, embeddings: Tensor, labels: Tensor) -> LossOutput:
        dist = pairwise_squared_l2(F.normalize(embeddings, dim=1))
        return self.loss(dist, self.miner(labels))


class PairwiseObjective(nn.Module):
    """Koch-style head on normalised embeddings, so nearest-neighbour search on the same embeddings stays meaningful."""

    def __init__(self, miner: BalancedPairMiner, loss: PairwiseBCELoss) -> None:
        super().__init__()
        self.miner = miner
        self.loss = loss

    def forward(self, embeddings: Tensor, labels: Tensor) -> LossOutput:
        return self.loss(F.normalize(embeddings, dim=1), self.miner(labels))


def build_objective(
    loss: LossName,
    embedding_dim: int,
    mining: MiningName = "batchhard",
    margin: float | None = None,
    seed: int = 0,
) -> nn.Module:
    """An objective by name; ``mining`` applies to the triplet loss only.

    Default margins: 0.2 for triplets (squared distance), 1.0 for contrastive (distance).
    """
    if loss == "triplet":
        miners: dict[str, TripletMiner] = {
            "random": RandomTripletMiner(seed),
            "semihard": SemiHardMiner(),
            "batchhard": BatchHardMiner(),
        }
        if mining not in miners:
            raise ValueError(f"unknown mining {mining!r}")
        return TripletObjective(miners[mining], TripletMarginLoss(0.2 if margin is None else margin))
    if loss == "contrastive":
        return ContrastiveObjective(BalancedPairMiner(seed), ContrastiveLoss(1.0 if margin is None else margin))
    if loss == "pairwise":
        return PairwiseObjective(BalancedPairMiner(seed), PairwiseBCELoss(embedding_dim))
    raise ValueError(f"unknown loss {loss!r}")
