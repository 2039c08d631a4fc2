"""Train a projection head over a frozen backbone, from cached features of augmented views.

With the backbone frozen, its features of each view can be computed once and the head trained on them for as
many epochs as wanted, which is what makes training the default photo model possible on two CPU cores. Views
are made batched on the device with kornia: random resized crop, flip, colour jitter, blur, small rotation and
JPEG re-compression, the edits that near-duplicates of a photo carry. Each source image is its own class
(self-supervised): the head learns to keep an image's views together and other images apart, with a batch-hard
triplet loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retrieval.distances import pairwise_squared_l2
from retrieval.losses.triplet import TripletMarginLoss
from retrieval.metrics import retrieval_scores
from retrieval.miners import BatchHardMiner
from retrieval.model import EmbeddingModel
from retrieval.training.views import photo_views


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


@dataclass(frozen=True)
class HeadTraining:
    out_dim: int = 128
    epochs: int = 60
    instances_per_batch: int = 64
    margin: float = 0.2
    lr: float = 3e-3
    weight_decay: float = 1e-4
    validation_fraction: float = 0.1
    seed: int = 0


@dataclass(frozen=True)
class HeadResult:
    head: nn.Linear
    best_epoch: int
    validation_recall_at_1: float
    history: list[tuple[int, float, float, float]]
    """(epoch, loss, active fraction, validation recall@1)."""


def _validation_recall(head: nn.Module, features: Tensor) -> float:
    with torch.no_grad():
        embedded = F.normalize(head(features.flatten(0, 1)), dim=1).numpy()
    labels = np.repeat(np.arange(len(features)), features.shape[1])
    return retrieval_scores(embedded, labels, ks=(1,)).recall_at[1]


def train_head(features: Tensor, config: HeadTraining,
               on_epoch: Callable[[int, float, float, float], None] | None = None) -> HeadResult:
    """Fit a linear head on cached view features (N, V, F); keeps the epoch with the best validation
    recall@1 (each view finding another view of its own image among held-out images)."""
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(features), generator=generator)
    held_out = max(2, int(len(features) * config.validation_fraction))
    validation, train = features[order[:held_out]], features[order[held_out:]]
    torch.manual_seed(config.seed)
    head = nn.Linear(features.shape[2], config.out_dim)
    optimiser = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, len(train) // config.instances_per_batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr,
                                                   total_steps=config.epochs * steps_per_epoch)
    miner, loss_fn = BatchHardMiner(), TripletMarginLoss(config.margin)
    views = train.shape[1]
    best = (-1.0, 0, {k: v.clone() for k, v in head.state_dict().items()})
    history = []
    for epoch in range(1, config.epochs + 1):
        permutation = torch.randperm(len(train), generator=generator)
        losses, active = [], []
        for step in range(steps_per_epoch):
            ids = permutation[step * config.instances_per_batch:(step + 1) * config.instances_per_batch]
            batch = train[ids].flatten(0, 1)
            labels = torch.arange(len(ids)).repeat_interleave(views)
            embedded = F.normalize(head(batch), dim=1)
            distances = pairwise_squared_l2(embedded)
            out = loss_fn(distances, miner(distances, labels))
            optimiser.zero_grad()
            out.loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(float(out.loss))
            active.append(out.active_fraction)
        recall = _validation_recall(head, validation)
        history.append((epoch, float(np.mean(losses)), float(np.mean(active)), recall))
        if on_epoch is not None:
            on_epoch(*history[-1])
        if recall > best[0]:
            best = (recall, epoch, {k: v.clone() for k, v in head.state_dict().items()})
    head.load_state_dict(best[2])
    return HeadResult(head, best[1], best[0], history)
