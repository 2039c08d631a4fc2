"""Lake et al.'s 20-way within-alphabet one-shot benchmark (``all_runs.zip``, 400 trials)."""

from __future__ import annotations

import torch

from retrieval.datasets.omniglot import LakeRun
from retrieval.evaluation.stats import Estimate, mean_ci
from retrieval.evaluation.types import EmbedFunction
from retrieval.vectors.distances import pairwise_squared_l2


def lake_oneshot_accuracy(embed: EmbedFunction, runs: tuple[LakeRun, ...] | list[LakeRun]) -> Estimate:
    """Fraction of queries whose nearest support image (squared L2) is the right one.

    Only the query -> support direction is used; the 95 % interval treats the trials as
    independent Bernoulli draws.
    """
    correct = []
    for run in runs:
        support = embed(run.support)
        queries = embed(run.queries)
        predicted = pairwise_squared_l2(queries, support).argmin(dim=1)
        correct.append(predicted == run.answers)
    return mean_ci(torch.cat(correct))
