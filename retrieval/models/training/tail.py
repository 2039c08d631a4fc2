"""Triplet training of the last stages of a pretrained EfficientNet-Lite0 and its head, on cached activations.

The trained part is the model itself (its stages from `first_stage` on, its 1x1 head convolution, its pooling and
its linear head), so training changes the model in place; the activations entering `first_stage` come from
`view_cache.stage_activations`. Batch-norm statistics stay frozen (a batch of 128 views of 32 photos is too small
and too correlated to estimate them); their scales and shifts train.

Batches are P photos x K views. Half of the photos (`hard_share`) are drawn from one group of related subjects
(two dog breeds, two birds), so the batch-hard miner finds the similar-but-different photos that dedup must keep
apart, and the positives are stacked user edits (`photo_edits`): the loss has work to do on both sides.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retrieval.models.encoders.efficientnet_lite import EfficientNetLite0
from retrieval.models.losses.triplet import TripletMarginLoss
from retrieval.models.miners import BatchHardMiner
from retrieval.models.model import EmbeddingModel
from retrieval.vectors.distances import pairwise_squared_l2


@dataclass(frozen=True)
class TailTraining:
    """How the tail is trained (the defaults are the shipped default's recipe)."""

    first_stage: int = 6
    steps: int = 400
    margin: float = 0.3
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    photos_per_batch: int = 32
    views_per_photo: int = 4
    hard_share: float = 0.5
    seed: int = 0


def embed_activations(model: EmbeddingModel, activations: Tensor, first_stage: int) -> Tensor:
    """The model's embeddings of float16 activations entering `first_stage` (any leading shape (B, C, H, W))."""
    backbone = model.backbone
    assert isinstance(backbone, EfficientNetLite0)
    pooled = backbone.pool(backbone.map_after(activations.float(), first_stage))
    return F.normalize(model.head(pooled), dim=1)


@torch.inference_mode()
def embed_all(model: EmbeddingModel, activations: Tensor, first_stage: int, batch_size: int = 256) -> Tensor:
    return torch.cat([embed_activations(model, part, first_stage) for part in activations.split(batch_size)])


def trained_parameters(model: EmbeddingModel, first_stage: int) -> list[nn.Parameter]:
    backbone = model.backbone
    assert isinstance(backbone, EfficientNetLite0)
    modules = [*backbone.stages[first_stage:], backbone.head, model.head]
    return [p for module in modules for p in module.parameters()]


def _batch_photos(rng: random.Random, photos: int, groups: Sequence[Sequence[int]], config: TailTraining) -> list[int]:
    group = rng.choice(groups) if groups else []
    hard = rng.sample(list(group), min(len(group), round(config.photos_per_batch * config.hard_share)))
    chosen = set(hard)
    rest = [i for i in rng.sample(range(photos), min(photos, config.photos_per_batch * 2)) if i not in chosen]
    return hard + rest[:config.photos_per_batch - len(hard)]


def train_tail(model: EmbeddingModel, activations: Tensor, subjects: Sequence[str], config: TailTraining,
               progress: Callable[[int, float], None] | None = None) -> list[float]:
    """Train `model`'s tail on `activations` (N photos, V views, C, H, W; view 0 the photo as it is) with the
    triplet loss; `subjects` names each photo's group of related subjects ("" for none). Returns the loss of every
    step; `progress(step, loss)` is called after each (the model may be evaluated or copied there)."""
    photos, views = activations.shape[:2]
    groups = [members for members in _groups(subjects).values() if len(members) >= 4]
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    parameters = trained_parameters(model, config.first_stage)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in parameters:
        p.requires_grad_(True)
    optimiser = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    miner, loss_of = BatchHardMiner(), TripletMarginLoss(config.margin)
    labels = torch.arange(config.photos_per_batch).repeat_interleave(config.views_per_photo)
    model.eval()  # frozen batch-norm statistics; nothing in the tail drops out
    losses = []
    for step in range(1, config.steps + 1):
        chosen = torch.tensor(_batch_photos(rng, photos, groups, config))
        picked = torch.stack([torch.randperm(views)[:config.views_per_photo] for _ in chosen])
        embeddings = embed_activations(model, activations[chosen[:, None], picked].flatten(0, 1), config.first_stage)
        distances = pairwise_squared_l2(embeddings)
        loss = loss_of(distances, miner(distances, labels[:len(embeddings)])).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, losses[-1])
    for p in model.parameters():
        p.requires_grad_(False)
    model.invalidate_hash()
    return losses


def _groups(subjects: Sequence[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, subject in enumerate(subjects):
        if subject:
            groups.setdefault(subject, []).append(i)
    return groups
