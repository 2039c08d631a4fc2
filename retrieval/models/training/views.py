"""Batched random views (kornia, on the training device) that make the positives of metric learning.

Both pipelines take float (B, C, H, W) batches in [0, 1] and keep their size.
"""

from __future__ import annotations

import math

from torch import nn


def photo_views(height: int, width: int, channels: int = 3) -> nn.Module:
    """The edits near-duplicates of a photo carry: random resized crop, flip, colour jitter, blur, small
    rotation and JPEG re-compression. Grey (one-channel) batches get brightness and contrast jitter and no
    JPEG step, both of which kornia implements for colour only."""
    import kornia.augmentation as K

    colour = channels == 3
    layers: list[nn.Module] = [
        K.RandomResizedCrop((height, width), scale=(0.5, 1.0), ratio=(0.75, 1.33)),
        K.RandomHorizontalFlip(),
        K.ColorJitter(0.3, 0.3, 0.3 if colour else 0.0, 0.03 if colour else 0.0, p=0.8),
        K.RandomGaussianBlur((5, 5), (0.1, 1.5), p=0.3),
        K.RandomRotation(10.0, p=0.5),
    ]
    if colour:
        layers.append(K.RandomJPEG(jpeg_quality=(30.0, 90.0), p=0.5))
    return nn.Sequential(*layers)


def stroke_views(degrees: float = 10.0, shear: float = 0.3, scale: tuple[float, float] = (0.8, 1.2),
                 translate: float = 0.1) -> nn.Module:
    """Koch et al.'s affine distortions for drawings and characters, a fresh one for every image: rotation within
    `degrees`, shear factors within +-`shear` and scales within `scale` along each axis independently, and a shift
    within `translate` of the side; the border (paper) colour is filled in."""
    import kornia.augmentation as K

    shear_degrees = math.degrees(math.atan(shear))
    return K.RandomAffine(degrees=degrees, translate=(translate, translate), scale=(*scale, *scale),
                          shear=(-shear_degrees, shear_degrees, -shear_degrees, shear_degrees),
                          padding_mode="border", p=1.0)
