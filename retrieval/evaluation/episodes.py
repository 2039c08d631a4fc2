"""Seeded N-way K-shot episodes scored by nearest class mean in squared L2."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from retrieval.errors import SimsearchError
from retrieval.evaluation.stats import Estimate, mean_ci
from retrieval.vectors.distances import pairwise_squared_l2


class EpisodeSamplingError(SimsearchError, ValueError):
    """The labels cannot supply the requested episode shape."""


@dataclass(frozen=True)
class Episode:
    """Indices into the evaluated set; ``query_labels`` index the ``n_way`` support classes."""

    support: Tensor
    support_labels: Tensor
    query: Tensor
    query_labels: Tensor


def sample_episodes(
    labels: Tensor,
    n_way: int,
    k_shot: int,
    n_query: int,
    episodes: int,
    seed: int = 0,
    groups: Tensor | None = None,
) -> list[Episode]:
    """Draw ``episodes`` episodes of ``n_way`` classes with ``k_shot`` support and ``n_query`` query images each.

    ``groups`` (one entry per class, e.g. the alphabet of each character) restricts
    every episode to classes of a single group, as in Lake's within-alphabet runs;
    groups too small for ``n_way`` classes are never drawn.
    """
    rng = np.random.default_rng(seed)
    labels_np = labels.cpu().numpy()
    members = {int(c): np.flatnonzero(labels_np == c) for c in np.unique(labels_np)}
    usable = [c for c, idx in members.items() if len(idx) >= k_shot + n_query]
    if groups is None:
        pools = [np.array(usable)]
    else:
        group_np = groups.cpu().numpy()
        pools = [np.array([c for c in usable if group_np[c] == g]) for g in np.unique(group_np)]
    pools = [p for p in pools if len(p) >= n_way]
    if not pools:
        raise EpisodeSamplingError(f"no class pool has {n_way} classes with {k_shot + n_query} images")
    out = []
    for _ in range(episodes):
        pool = pools[rng.integers(len(pools))]
        classes = rng.choice(pool, size=n_way, replace=False)
        support, query = [], []
        for cls in classes:
            picked = rng.choice(members[int(cls)], size=k_shot + n_query, replace=False)
            support.append(picked[:k_shot])
            query.append(picked[k_shot:])
        out.append(
            Episode(
                support=torch.from_numpy(np.concatenate(support)),
                support_labels=torch.arange(n_way).repeat_interleave(k_shot),
                query=torch.from_numpy(np.concatenate(query)),
                query_labels=torch.arange(n_way).repeat_interleave(n_query),
            )
        )
    return out


def episode_accuracy(embeddings: Tensor, episodes: list[Episode]) -> Estimate:
    """Mean per-episode accuracy: each query goes to the class whose mean support embedding is nearest.

    With one shot this is plain nearest neighbour. Embeddings should be L2-normalised.
    """
    accuracies = []
    for episode in episodes:
        support = embeddings[episode.support]
        n_way = int(episode.support_labels.max()) + 1
        prototypes = torch.zeros(n_way, support.shape[1], dtype=support.dtype).index_add_(
            0, episode.support_labels, support
        ) / torch.bincount(episode.support_labels, minlength=n_way).unsqueeze(1)
        predicted = pairwise_squared_l2(embeddings[episode.query], prototypes).argmin(dim=1)
        accuracies.append((predicted == episode.query_labels).double().mean())
    return mean_ci(torch.stack(accuracies))
