"""Backbone features of augmented views, for training a projection head over a frozen backbone.

With the backbone frozen, its features of each view can be computed once and the head trained on them for as
many epochs as wanted, which is what makes training the default photo model possible on two CPU cores. Views
are made batched on the device with kornia (`retrieval.models.training.views.photo_views`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from retrieval.models.model import EmbeddingModel
from retrieval.models.training.views import photo_views


@torch.inference_mode()
def view_features(model: EmbeddingModel, images: Tensor, views: int, batch_size: int = 32,
                  progress: Callable[[int], None] | None = None) -> Tensor:
    """Backbone features (N, 1 + views, F) of each uint8 image (N, H, W, 3): the plain image resized, then
    `views` augmented views."""
    prep = model.preprocessing
    augment = photo_views(images.shape[1], images.shape[2])
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device).permute(0, 3, 1, 2).float() / 255.0
        stacked = torch.stack([batch] + [augment(batch) for _ in range(views)], dim=1).flatten(0, 1)
        pixels = F.interpolate(stacked, size=prep.size[::-1], mode="bilinear", antialias=True,
                               align_corners=False).clamp(0.0, 1.0) * 255.0
        x = ((pixels - prep.mean) / prep.std).contiguous(memory_format=torch.channels_last)
        out.append(model.backbone(x).float().view(len(batch), 1 + views, -1).cpu())
        if progress is not None:
            progress(len(batch))
    return torch.cat(out)
