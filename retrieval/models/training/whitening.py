"""PCA whitening of backbone features, as the starting point of a linear projection head.

A randomly initialised head throws away most of what the 1280-d backbone features carry and must learn it back
from a few hundred training photos; a head that starts as the PCA whitening of photo features keeps the main
directions of those features and evens out their scales (the fix for the "bursty", over-dominant directions of
CNN descriptors, Jegou & Chum 2012; SSCD fits one too, Pizzi et al. 2022). Triplet training then moves it from
there. Shrinkage adds a fraction of the mean eigenvalue to every eigenvalue, so that the weak directions, mostly
noise, are not blown up to the strength of the strong ones.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def pca_whitening(features: Tensor, dim: int, shrinkage: float = 1.0) -> tuple[Tensor, Tensor]:
    """Weight (dim, F) and bias (dim,) of the map x -> W (x - mean) onto the `dim` leading principal directions
    of `features` (N, F), each scaled by 1 / sqrt(eigenvalue + shrinkage * mean eigenvalue)."""
    if not 1 <= dim <= features.shape[1]:
        raise ValueError(f"whitening to {dim} dimensions needs 1 <= dim <= {features.shape[1]}")
    data = features.double()
    mean = data.mean(dim=0)
    centred = data - mean
    covariance = centred.T @ centred / max(1, len(data) - 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    order = torch.argsort(eigenvalues, descending=True)[:dim]
    scale = (eigenvalues[order].clamp(min=0.0) + shrinkage * eigenvalues.clamp(min=0.0).mean()).rsqrt()
    weight = (eigenvectors[:, order] * scale).T
    return weight.float(), (-weight @ mean).float()


def initialise_as_whitening(head: nn.Linear, features: Tensor, shrinkage: float = 1.0) -> None:
    """Set `head` to the PCA whitening of `features` (its output size is the number of directions kept)."""
    weight, bias = pca_whitening(features, head.out_features, shrinkage)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
