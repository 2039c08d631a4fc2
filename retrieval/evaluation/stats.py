"""Means with normal-approximation 95 % confidence intervals."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

Z_95 = 1.959964


@dataclass(frozen=True)
class Estimate:
    """A mean over ``n`` independent trials or episodes, plus/minus ``ci95``."""

    mean: float
    ci95: float
    n: int

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} % +- {100 * self.ci95:.2f}"


def mean_ci(values: Tensor) -> Estimate:
    """Mean of ``values`` with ``1.96 * sample std / sqrt(n)`` as the 95 % half-width."""
    n = values.numel()
    if n == 0:
        raise ValueError("no values to average")
    values = values.double()
    std = float(values.std(unbiased=True)) if n > 1 else 0.0
    return Estimate(float(values.mean()), Z_95 * std / math.sqrt(n), n)
