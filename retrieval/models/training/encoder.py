"""Train an embedding model on labelled (or self-supervised) images: what `simsearch train` runs.

Three ways, by backbone:

- ``small-cnn``: the whole network from scratch on the images, with batched kornia views as augmentation;
- ``efficientnet-lite0`` with ``trainable_stages=0``: the ImageNet backbone stays frozen, so its features of the
  plain image and of ``views`` augmented views are computed once and only the projection head is trained on
  them (minutes on a CPU);
- ``efficientnet-lite0`` with ``trainable_stages=n``: the last ``n`` backbone stages are fine-tuned with the head,
  on freshly augmented images every step (slow without a GPU).

Classes of the data are split into training and validation classes; the validation score (recall@1 of
retrieving a held-out item of the same class) picks the best epoch, which is the model returned.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retrieval.errors import SimsearchError
from retrieval.evaluation.metrics import retrieval_scores
from retrieval.models.model import EmbeddingModel, build_model, pretrained_backbone_spec
from retrieval.models.model_spec import FILE_WEIGHTS, ModelSpec, Pooling
from retrieval.models.pair_head import PairwiseHead
from retrieval.models.training.frozen_backbone import view_features
from retrieval.models.training.objectives import LossName, MiningName, build_objective
from retrieval.models.training.trainer import EpochCallback, StepCallback, Trainer, TrainerConfig, TrainResult, Validate
from retrieval.models.training.views import photo_views, stroke_views
from retrieval.models.training.whitening import initialise_as_whitening
from retrieval.sources.images import Preprocessing

Backbone = Literal["small-cnn", "efficientnet-lite0"]
BACKBONES: tuple[str, ...] = ("small-cnn", "efficientnet-lite0")
HeadInit = Literal["random", "whitening"]
HEAD_INITS: tuple[str, ...] = get_args(HeadInit)


class TrainingDataError(SimsearchError):
    """The data cannot support the training asked for (too few classes or images)."""


@dataclass(frozen=True)
class EncoderTraining:
    """Everything that decides a training run; recorded in checkpoints so a resume cannot mix settings."""

    backbone: Backbone = "small-cnn"
    embedding_dim: int = 128
    trainable_stages: int = 0
    """efficientnet-lite0 only: how many of its last stages to fine-tune (0: frozen backbone)."""
    views: int = 4
    """Frozen backbone only: augmented views of each image whose features are cached."""
    input_size: int = 42
    """small-cnn only: the square input side."""
    colour: bool = False
    """small-cnn only: RGB input instead of grey."""
    pooling: Pooling = "mean"
    """efficientnet-lite0 only: how the backbone's feature map is pooled (mean, or generalised mean)."""
    head_init: HeadInit = "random"
    """Frozen efficientnet-lite0 only: the linear head starts random, or as the PCA whitening of the training
    features (`retrieval.models.training.whitening`)."""
    loss: LossName = "triplet"
    mining: MiningName = "semihard"
    margin: float | None = None
    classes_per_batch: int = 32
    images_per_class: int = 4
    epochs: int = 20
    steps_per_epoch: int = 200
    lr: float = 1e-3
    weight_decay: float = 1e-4
    validation_fraction: float = 0.2
    self_supervised: bool = False
    seed: int = 0
    device: str = "cpu"
    name: str = "simsearch-trained"

    @property
    def frozen_backbone(self) -> bool:
        return self.backbone == "efficientnet-lite0" and self.trainable_stages == 0

    def signature(self, labels: Tensor) -> str:
        """Identifies the data and the settings that shape the optimisation (not epochs, not the device)."""
        settings = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("epochs", "device", "name")}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
        digest.update(labels.cpu().numpy().astype(np.int64).tobytes())
        return digest.hexdigest()


@dataclass(frozen=True)
class TrainedEncoder:
    model: EmbeddingModel
    result: TrainResult
    training_classes: int
    validation_classes: int


def new_model(config: EncoderTraining) -> EmbeddingModel:
    """The untrained model a run starts from (ImageNet weights for efficientnet-lite0)."""
    if config.backbone == "small-cnn":
        if config.colour:
            prep = Preprocessing(size=(config.input_size,) * 2, mode="RGB", mean=127.5, std=127.5)
        else:
            prep = Preprocessing(size=(config.input_size,) * 2, mode="L", mean=255.0, std=-255.0)
        spec = ModelSpec(name=config.name, backbone="small-cnn", embedding_dim=config.embedding_dim,
                         preprocessing=prep, head="identity")
        torch.manual_seed(config.seed)
        return build_model(spec)
    if config.backbone == "efficientnet-lite0":
        options = {"pooling": config.pooling} if config.pooling != "mean" else {}
        spec = dataclasses.replace(pretrained_backbone_spec(), name=config.name, head="linear",
                                   embedding_dim=config.embedding_dim, backbone_options=options)
        torch.manual_seed(config.seed)
        model = build_model(spec)
        if config.trainable_stages:
            model.spec = dataclasses.replace(spec, backbone_weights=FILE_WEIGHTS)
        return model
    raise TrainingDataError(f"unknown backbone {config.backbone!r} (choose from {', '.join(BACKBONES)})")


def split_classes(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Boolean masks of training and validation items; whole classes are held out, at least two when any."""
    classes = torch.unique(labels)
    held = int(round(len(classes) * fraction))
    if fraction > 0 and len(classes) >= 6:
        held = max(2, held)
    else:
        held = 0
    order = torch.randperm(len(classes), generator=torch.Generator().manual_seed(seed))
    validation = torch.isin(labels, classes[order[:held]])
    return ~validation, validation


class _PixelEncoder(nn.Module):
    """Float [0, 1] (B, C, H, W) batches -> un-normalised embeddings through the model's own normalisation,
    backbone and head; frozen modules stay in eval mode (fixed batch-norm statistics) while training."""

    def __init__(self, model: EmbeddingModel, frozen: list[nn.Module]) -> None:
        super().__init__()
        self.model = model
        self.frozen = frozen
        for module in frozen:
            module.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        prep = self.model.preprocessing
        return self.model.head(self.model.backbone((x * 255.0 - prep.mean) / prep.std))

    def train(self, mode: bool = True) -> _PixelEncoder:
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self


def _frozen_modules(model: EmbeddingModel, config: EncoderTraining) -> list[nn.Module]:
    if config.backbone != "efficientnet-lite0":
        return []
    backbone = model.backbone
    parts: list[nn.Module] = [backbone.stem, *backbone.stages, backbone.head]  # type: ignore[union-attr]
    if not 0 <= config.trainable_stages <= len(parts):
        raise TrainingDataError(f"trainable stages must be between 0 and {len(parts)}")
    return parts[: len(parts) - config.trainable_stages]


def _to_unit(pixels: Tensor) -> Tensor:
    """uint8 (B, H, W, C) -> float (B, C, H, W) in [0, 1]."""
    return pixels.permute(0, 3, 1, 2).float() / 255.0


def _views(config: EncoderTraining, pixels: Tensor) -> nn.Module:
    """Affine distortions for labelled grey drawings; otherwise, and always for self-supervised positives, the
    photo edits (grey images get them without colour jitter and JPEG)."""
    height, width, channels = pixels.shape[1:]
    if channels == 1 and config.backbone == "small-cnn" and not config.self_supervised:
        return stroke_views()
    return photo_views(height, width, channels)


def _recall_at_1(embeddings: Tensor, labels: Tensor) -> float:
    normalised = F.normalize(embeddings.float(), dim=1).cpu().numpy()
    return retrieval_scores(normalised, labels.cpu().numpy(), ks=(1,)).recall_at[1]


def _validation_pixels(config: EncoderTraining, pixels: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The held-out images, plus (self-supervised) one fixed augmented view of each as its only positive."""
    if not config.self_supervised:
        return _to_unit(pixels), labels
    with torch.random.fork_rng():
        torch.manual_seed(config.seed + 1)
        views = _views(config, pixels)(_to_unit(pixels))
    return torch.cat([_to_unit(pixels), views]), torch.cat([labels, labels])


def _trainer_config(config: EncoderTraining, train_labels: Tensor) -> TrainerConfig:
    classes = len(torch.unique(train_labels))
    if classes < 2:
        raise TrainingDataError(f"training needs at least two classes, found {classes}")
    return TrainerConfig(classes_per_batch=min(config.classes_per_batch, classes),
                         images_per_class=config.images_per_class, lr=config.lr, weight_decay=config.weight_decay,
                         warmup_steps=min(100, config.steps_per_epoch), max_steps=config.epochs * config.steps_per_epoch,
                         steps_per_epoch=config.steps_per_epoch, seed=config.seed, device=config.device)


def train_encoder(
    config: EncoderTraining,
    pixels: Tensor,
    labels: Tensor,
    *,
    checkpoint: Path | None = None,
    resume: bool = False,
    on_step: StepCallback | None = None,
    on_epoch: EpochCallback | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainedEncoder:
    """Train on uint8 images (N, H, W, C) at the model's input size with integer labels (N,).

    ``log`` receives notes on the way (not the epochs: ``on_epoch`` gets those as records).

    With ``checkpoint`` the training state is saved there after every epoch; with ``resume`` a run starts from it.
    """
    if config.images_per_class < 2 or config.classes_per_batch < 2:
        raise TrainingDataError("batches need at least 2 classes of at least 2 images each")
    if config.pooling != "mean" and config.backbone != "efficientnet-lite0":
        raise TrainingDataError("--pooling applies to the efficientnet-lite0 backbone only")
    if config.head_init != "random" and not config.frozen_backbone:
        raise TrainingDataError("--head-init whitening needs the frozen efficientnet-lite0 backbone "
                                "(--trainable-stages 0)")
    model = new_model(config)
    train_mask, val_mask = split_classes(labels, 0.0 if config.self_supervised and len(labels) < 6
                                         else config.validation_fraction, config.seed)
    trainer_config = _trainer_config(config, labels[train_mask])
    objective = build_objective(config.loss, config.embedding_dim, config.mining, config.margin, config.seed)
    device = torch.device(config.device)
    if config.frozen_backbone:
        trainer = _frozen_backbone_trainer(config, model, pixels, labels, train_mask, val_mask, objective,
                                           trainer_config, device, log)
    else:
        trainer = _pixel_trainer(config, model, pixels, labels, train_mask, val_mask, objective, trainer_config,
                                 device)
    trainer.tag = config.signature(labels)
    trainer.on_step, trainer.on_epoch = on_step, on_epoch
    if resume and checkpoint is not None and checkpoint.exists():
        trainer.resume(checkpoint)
    result = trainer.fit(checkpoint)
    if config.loss == "pairwise":
        _keep_pair_head(model, objective)
    model = model.cpu().eval()
    model.invalidate_hash()
    return TrainedEncoder(model, result, len(torch.unique(labels[train_mask])), len(torch.unique(labels[val_mask])))


def _keep_pair_head(model: EmbeddingModel, objective: nn.Module) -> None:
    """Carry the trained pairwise head (of the best epoch) into the model, so `verify` can report its
    probability."""
    model.spec = dataclasses.replace(model.spec, pair_head=True)
    model.pair_head = PairwiseHead(model.embedding_dim)
    model.pair_head.load_state_dict(objective.loss.head.state_dict())  # type: ignore[union-attr]


def _pixel_trainer(config: EncoderTraining, model: EmbeddingModel, pixels: Tensor, labels: Tensor,
                   train_mask: Tensor, val_mask: Tensor, objective: nn.Module, trainer_config: TrainerConfig,
                   device: torch.device) -> Trainer:
    encoder = _PixelEncoder(model, _frozen_modules(model, config))
    validate = _pixel_validator(config, pixels[val_mask], labels[val_mask], device) if bool(val_mask.any()) else None
    return Trainer(encoder, objective, pixels[train_mask], labels[train_mask], _to_unit, trainer_config,
                   augment=_views(config, pixels).to(device), validate=validate)


def _pixel_validator(config: EncoderTraining, pixels: Tensor, labels: Tensor, device: torch.device) -> Validate:
    val_pixels, val_labels = _validation_pixels(config, pixels, labels)

    def validate(module: nn.Module) -> float:
        embedded = torch.cat([module(val_pixels[i:i + 256].to(device)).cpu() for i in range(0, len(val_pixels), 256)])
        return _recall_at_1(embedded, val_labels)

    return validate


def _features_validator(config: EncoderTraining, features: Tensor, labels: Tensor, device: torch.device) -> Validate:
    """Plain-image features of held-out classes; self-supervised, each image's first view is its positive."""
    per_image = 2 if config.self_supervised else 1
    val_features = features[:, :per_image].flatten(0, 1)
    val_labels = labels.repeat_interleave(per_image)

    def validate(head: nn.Module) -> float:
        return _recall_at_1(head(val_features.to(device)).cpu(), val_labels)

    return validate


def _frozen_backbone_trainer(config: EncoderTraining, model: EmbeddingModel, pixels: Tensor, labels: Tensor,
                             train_mask: Tensor, val_mask: Tensor, objective: nn.Module,
                             trainer_config: TrainerConfig, device: torch.device,
                             log: Callable[[str], None] | None) -> Trainer:
    if log is not None:
        log(f"computing backbone features of {len(pixels)} images x {1 + config.views} views")
    torch.manual_seed(config.seed)
    features = view_features(model.to(device), pixels, config.views)
    rows = 1 + config.views
    if config.head_init == "whitening":
        initialise_as_whitening(model.head, features[train_mask].flatten(0, 1))  # type: ignore[arg-type]
    flat_labels = labels.repeat_interleave(rows)
    validate = (_features_validator(config, features[val_mask], labels[val_mask], device) if bool(val_mask.any())
                else None)
    train_rows = train_mask.repeat_interleave(rows)
    return Trainer(model.head, objective, features[train_mask].flatten(0, 1), flat_labels[train_rows],
                   lambda batch: batch, trainer_config, validate=validate)
