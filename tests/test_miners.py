"""Distance matrix, triplet/pair miners and the P x K sampler on hand-made batches."""

from __future__ import annotations

import torch
from torch import Tensor

from retrieval.models.miners import BalancedPairMiner, BatchHardMiner, RandomTripletMiner, SemiHardMiner, Triplets
from retrieval.models.training.sampler import PKSampler
from retrieval.vectors.distances import pairwise_squared_l2

LABELS = torch.tensor([0, 0, 1, 1])
# Symmetric distances for a batch labelled [0, 0, 1, 1].
DIST = torch.tensor(
    [
        [0.0, 1.0, 0.5, 2.0],
        [1.0, 0.0, 3.0, 1.5],
        [0.5, 3.0, 0.0, 0.2],
        [2.0, 1.5, 0.2, 0.0],
    ]
)


def _as_set(triplets: Triplets) -> set[tuple[int, int, int]]:
    return set(zip(triplets.anchor.tolist(), triplets.positive.tolist(), triplets.negative.tolist(), strict=True))


def test_pairwise_squared_l2_matches_cdist_and_is_safe() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=gen)
    y = torch.randn(3, 5, generator=gen)
    assert torch.allclose(pairwise_squared_l2(x, y), torch.cdist(x, y).pow(2), atol=1e-5)
    same = torch.cat([x, x[:1]]).requires_grad_(True)
    dist = pairwise_squared_l2(same)
    assert (dist >= 0).all() and torch.equal(dist.diagonal(), torch.zeros(7))
    assert dist[0, 6].item() == 0.0
    dist.sum().backward()
    assert torch.isfinite(same.grad).all()


def test_batch_hard_takes_farthest_positive_and_closest_negative() -> None:
    assert _as_set(BatchHardMiner()(DIST, LABELS)) == {(0, 1, 2), (1, 0, 3), (2, 3, 0), (3, 2, 1)}


def test_semi_hard_takes_closest_negative_beyond_the_positive() -> None:
    triplets = SemiHardMiner()(DIST, LABELS)
    # anchor 0: d(0,1) = 1.0, negatives 0.5 and 2.0 -> 3; anchor 1: d(1,0) = 1.0 -> 1.5 (index 3);
    # anchor 2: d(2,3) = 0.2 -> 0.5 (index 0); anchor 3: d(3,2) = 0.2 -> 1.5 (index 1)
    assert _as_set(triplets) == {(0, 1, 3), (1, 0, 3), (2, 3, 0), (3, 2, 1)}
    d_ap = DIST[triplets.anchor, triplets.positive]
    d_an = DIST[triplets.anchor, triplets.negative]
    assert (d_an > d_ap).all()


def test_semi_hard_drops_pairs_without_a_farther_negative() -> None:
    dist = DIST.clone()
    dist[0, 1] = dist[1, 0] = 5.0
    anchors = SemiHardMiner()(dist, LABELS).anchor.tolist()
    assert 0 not in anchors and 1 not in anchors


def test_random_miner_covers_every_positive_pair_with_a_valid_negative_deterministically() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    dist = torch.zeros(6, 6)
    first = RandomTripletMiner(seed=3)(dist, labels)
    second = RandomTripletMiner(seed=3)(dist, labels)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert first.anchor.numel() == 3 * 2 + 2 * 1
    assert (labels[first.anchor] == labels[first.positive]).all()
    assert (first.anchor != first.positive).all()
    assert (labels[first.anchor] != labels[first.negative]).all()


def test_miners_skip_anchors_without_positive() -> None:
    labels = torch.tensor([0, 0, 1])
    dist = pairwise_squared_l2(torch.randn(3, 2, generator=torch.Generator().manual_seed(0)))
    for miner in (BatchHardMiner(), SemiHardMiner(), RandomTripletMiner()):
        assert 2 not in miner(dist, labels).anchor.tolist()


def test_balanced_pair_miner_is_half_positive() -> None:
    labels = torch.arange(8).repeat_interleave(4)
    pairs = BalancedPairMiner(seed=0)(labels)
    n_pos = 8 * 4 * 3 // 2
    assert pairs.same.sum().item() == n_pos and pairs.same.numel() == 2 * n_pos
    assert torch.equal(labels[pairs.first] == labels[pairs.second], pairs.same)
    assert (pairs.first < pairs.second).all()


def _classes_of(batch: Tensor, labels: Tensor, k: int) -> Tensor:
    return labels[batch].view(-1, k)


def test_pk_sampler_gives_p_classes_of_k_images_and_is_seeded() -> None:
    labels = torch.arange(10).repeat_interleave(6)
    sampler = PKSampler(labels, classes_per_batch=4, images_per_class=3, seed=1)
    batches = [sampler.next_batch() for _ in range(5)]
    again = PKSampler(labels, classes_per_batch=4, images_per_class=3, seed=1)
    assert all(torch.equal(b, again.next_batch()) for b in batches)
    for batch in batches:
        grouped = _classes_of(batch, labels, 3)
        assert (grouped == grouped[:, :1]).all()
        assert grouped[:, 0].unique().numel() == 4
        assert all(row.unique().numel() == 3 for row in batch.view(-1, 3))
