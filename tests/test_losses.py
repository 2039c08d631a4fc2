"""Losses on hand-made embeddings with known answers, gradient directions, and the Koch pairwise head."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from retrieval.models.losses.contrastive import ContrastiveLoss
from retrieval.models.losses.pairwise import PairwiseBCELoss
from retrieval.models.losses.triplet import TripletMarginLoss
from retrieval.models.miners import Pairs, Triplets
from retrieval.models.pair_head import PairwiseHead
from retrieval.vectors.distances import pairwise_squared_l2


def _long(*values: int) -> Tensor:
    return torch.tensor(values, dtype=torch.long)


def _step(points: Tensor, lr: float = 0.01) -> Tensor:
    assert points.grad is not None
    return (points - lr * points.grad).detach()


def test_triplet_loss_known_value_and_active_fraction() -> None:
    # rows: anchor, positive, easy negative, hard negative (unit vectors)
    points = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.8, 0.6]])
    dist = pairwise_squared_l2(points)
    triplets = Triplets(_long(0, 0), _long(1, 1), _long(2, 3))
    out = TripletMarginLoss(margin=0.2)(dist, triplets)
    # d(a,p) = 2, d(a,easy) = 4 -> 0; d(a,hard) = 0.04 + 0.36 = 0.4 -> 2 - 0.4 + 0.2 = 1.8
    assert out.loss.item() == pytest.approx(0.9)
    assert out.active_fraction == pytest.approx(0.5)
    assert out.count == 2
    nonzero = TripletMarginLoss(margin=0.2, reduction="nonzero")(dist, triplets)
    assert nonzero.loss.item() == pytest.approx(1.8)


def test_triplet_loss_pulls_positive_and_pushes_negative() -> None:
    points = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]], requires_grad=True)
    out = TripletMarginLoss(margin=0.2)(pairwise_squared_l2(points), Triplets(_long(0), _long(1), _long(2)))
    out.loss.backward()
    before, after = pairwise_squared_l2(points.detach()), pairwise_squared_l2(_step(points))
    assert after[0, 1] < before[0, 1]
    assert after[0, 2] > before[0, 2]


def test_triplet_loss_without_triplets_is_zero_with_gradient() -> None:
    points = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    empty = _long()
    out = TripletMarginLoss()(pairwise_squared_l2(points), Triplets(empty, empty, empty))
    out.loss.backward()
    assert out.loss.item() == 0.0 and out.active_fraction == 0.0
    assert points.grad is not None and torch.count_nonzero(points.grad) == 0


def test_contrastive_loss_known_value() -> None:
    points = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.0, 0.5], [1.5, 0.0]])
    pairs = Pairs(_long(0, 0, 0), _long(1, 2, 3), torch.tensor([True, False, False]))
    out = ContrastiveLoss(margin=1.0)(pairwise_squared_l2(points), pairs)
    # similar at d=0.5: 0.5 * 0.25; dissimilar at d=0.5: 0.5 * (1 - 0.5)^2; dissimilar at d=1.5: 0
    assert out.loss.item() == pytest.approx((0.125 + 0.125 + 0.0) / 3)
    assert out.active_fraction == pytest.approx(2 / 3)


def test_contrastive_loss_gradient_signs_and_finite_at_zero_distance() -> None:
    points = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.0, 0.5], [0.0, 0.0]], requires_grad=True)
    pairs = Pairs(_long(0, 0, 0), _long(1, 2, 3), torch.tensor([True, False, False]))
    ContrastiveLoss(margin=1.0)(pairwise_squared_l2(points), pairs).loss.backward()
    assert torch.isfinite(points.grad).all()
    before, after = pairwise_squared_l2(points.detach()), pairwise_squared_l2(_step(points))
    assert after[0, 1] < before[0, 1]
    assert after[0, 2] > before[0, 2]


def test_pairwise_bce_known_value_and_gradient_signs() -> None:
    loss = PairwiseBCELoss(embedding_dim=2)
    with torch.no_grad():
        loss.head.linear.weight.fill_(-1.0)
        loss.head.linear.bias.fill_(1.0)
    points = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.0, 2.0]], requires_grad=True)
    pairs = Pairs(_long(0, 0), _long(1, 2), torch.tensor([True, False]))
    out = loss(points, pairs)
    # logits: 1 - 0.5 = 0.5 (same, right side), 1 - 2 = -1 (different, right side)
    expected = (math.log1p(math.exp(-0.5)) + math.log1p(math.exp(-1.0))) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.active_fraction == 0.0
    out.loss.backward()
    before, after = pairwise_squared_l2(points.detach()), pairwise_squared_l2(_step(points))
    assert after[0, 1] < before[0, 1]
    assert after[0, 2] > before[0, 2]


def _clustered_pairs(seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Embeddings of 4 well-separated classes; all same-class pairs plus as many cross-class pairs."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.eye(4) * 3.0
    labels = torch.arange(4).repeat_interleave(5)
    points = centres[labels] + 0.1 * torch.randn(20, 4, generator=gen)
    i, j = torch.triu_indices(20, 20, offset=1)
    same = labels[i] == labels[j]
    neg = (~same).nonzero().squeeze(1)[: int(same.sum())]
    keep = torch.cat([same.nonzero().squeeze(1), neg])
    return points[i[keep]], points[j[keep]], same[keep]


def _train_head(head: nn.Module, first: Tensor, second: Tensor, same: Tensor, steps: int = 200) -> None:
    optimiser = torch.optim.Adam(head.parameters(), lr=0.1)
    for _ in range(steps):
        optimiser.zero_grad()
        F.binary_cross_entropy_with_logits(head(first, second), same.float()).backward()
        optimiser.step()


def test_pairwise_head_with_bias_calls_identical_inputs_same() -> None:
    torch.manual_seed(0)
    first, second, same = _clustered_pairs(seed=0)
    head = PairwiseHead(embedding_dim=4)
    _train_head(head, first, second, same)
    probe = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    assert (head.score(probe, probe) > 0.5).all()
    assert head.linear.bias.item() > 0
    # Without a bias, identical inputs give |h1 - h2| = 0 and can only ever score sigmoid(0).
    with torch.no_grad():
        head.linear.bias.zero_()
    assert torch.allclose(head.score(probe, probe), torch.full((3,), 0.5))


class _SignedDifferenceHead(nn.Module):
    """The variant Koch et al. avoided: a linear layer on h1 - h2 instead of |h1 - h2|."""

    def __init__(self, embedding_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(embedding_dim, 1)

    def forward(self, first: Tensor, second: Tensor) -> Tensor:
        return self.linear(first - second).squeeze(-1)


def _symmetric_problem() -> tuple[Tensor, Tensor, Tensor]:
    """1-D points; a pair is "same" when the points are 0.25 apart and "different" at 1.0, in both orders."""
    x = torch.arange(10, dtype=torch.float32).unsqueeze(1)
    near, far = x + 0.25, x + 1.0
    first = torch.cat([x, near, x, far])
    second = torch.cat([near, x, far, x])
    same = torch.cat([torch.ones(20, dtype=torch.bool), torch.zeros(20, dtype=torch.bool)])
    return first, second, same


def _accuracy(head: nn.Module, first: Tensor, second: Tensor, same: Tensor) -> float:
    with torch.no_grad():
        return ((head(first, second) > 0) == same).float().mean().item()


def test_absolute_difference_head_learns_symmetric_sameness_signed_difference_does_not() -> None:
    first, second, same = _symmetric_problem()
    torch.manual_seed(0)
    absolute = PairwiseHead(embedding_dim=1)
    torch.manual_seed(0)
    signed = _SignedDifferenceHead(embedding_dim=1)
    _train_head(absolute, first, second, same, steps=300)
    _train_head(signed, first, second, same, steps=300)
    assert _accuracy(absolute, first, second, same) == 1.0
    # Each signed difference appears with both signs under the same label, so no weight helps.
    assert _accuracy(signed, first, second, same) <= 0.6
