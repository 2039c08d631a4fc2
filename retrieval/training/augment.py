"""Random affine distortions applied to a whole batch at once with ``affine_grid``/``grid_sample``."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F


class RandomAffine:
    """Per-image random rotation, shear, anisotropic scale and translation (Koch et al. 2015 style).

    Ranges: rotation in ``+-degrees``, shear factors in ``+-shear``, x and y scales drawn
    independently from ``scale``, translation in ``+-translate`` as a fraction of the
    image side. Parameters are drawn on the CPU from a seeded generator, so results do
    not depend on the device. Areas moved in from outside the image are filled with
    zero, which is the background of inverted (bright-stroke) inputs.
    """

    def __init__(
        self,
        degrees: float = 10.0,
        shear: float = 0.3,
        scale: tuple[float, float] = (0.8, 1.2),
        translate: float = 0.1,
        seed: int = 0,
    ) -> None:
        self.degrees = degrees
        self.shear = shear
        self.scale = scale
        self.translate = translate
        self.generator = torch.Generator().manual_seed(seed)

    def _uniform(self, n: int, low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(n, generator=self.generator)

    def matrices(self, n: int) -> Tensor:
        """(n, 2, 3) matrices in ``affine_grid`` convention (output -> input coordinates in [-1, 1])."""
        angle = self._uniform(n, -self.degrees, self.degrees) * (math.pi / 180.0)
        shear_x = self._uniform(n, -self.shear, self.shear)
        shear_y = self._uniform(n, -self.shear, self.shear)
        scale_x = self._uniform(n, *self.scale)
        scale_y = self._uniform(n, *self.scale)
        shift = self._uniform(2 * n, -2 * self.translate, 2 * self.translate).view(n, 2)
        cos, sin = torch.cos(angle), torch.sin(angle)
        rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        shear = torch.stack([torch.stack([torch.ones(n), shear_x], -1), torch.stack([shear_y, torch.ones(n)], -1)], -2)
        linear = torch.diag_embed(torch.stack([scale_x, scale_y], -1)) @ shear @ rotation
        return torch.cat([linear, shift.unsqueeze(-1)], dim=-1)

    def __call__(self, images: Tensor) -> Tensor:
        """Distort a float (B, C, H, W) batch."""
        theta = self.matrices(images.shape[0]).to(device=images.device, dtype=images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
