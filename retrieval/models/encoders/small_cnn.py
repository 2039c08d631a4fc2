"""A small from-scratch CNN for small grey images (Omniglot-sized characters).

Preprocessing, exactly: decode with PIL and convert to mode ``"L"``; resize to
``INPUT_SIZE x INPUT_SIZE`` with PIL's ``Image.Resampling.BILINEAR`` filter (PIL
antialiases when it downsamples); take the 0..255 pixel values as floats and compute
``(x - PIXEL_MEAN) / PIXEL_STD``. The negative std inverts the image so that pen strokes
are bright (about 1) on a zero background, which is also what zero padding in
convolutions and augmentation fills in.
"""

from __future__ import annotations

from collections.abc import Sequence
from torch import Tensor, nn

from retrieval.sources.images import Preprocessing


INPUT_SIZE = 42
PIXEL_MEAN = 255.0
PIXEL_STD = -255.0
RESAMPLE = "BILINEAR"
PREPROCESSING = Preprocessing(size=(INPUT_SIZE, INPUT_SIZE), mode="L", mean=PIXEL_MEAN, std=PIXEL_STD,
                              resample=RESAMPLE.lower())


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SmallCNN(nn.Module):
    """Blocks of conv3x3-BN-ReLU-maxpool2, flattened, then a linear embedding layer.

    ``channels`` gives one block per entry. The flattened size depends on
    ``input_size``, so the network accepts only inputs of that side length. The output
    is not normalised. ``embedding_bn`` adds a batch norm after the linear layer: it
    removes the component all embeddings share, which otherwise dominates at
    initialisation and lets batch-hard triplet mining collapse every embedding onto
    one point.
    """

    def __init__(
        self,
        in_channels: int = 1,
        embedding_dim: int = 128,
        channels: Sequence[int] = (64, 64, 64, 64),
        input_size: int = INPUT_SIZE,
        embedding_bn: bool = True,
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("channels must name at least one block")
        side = input_size
        blocks = []
        for out_channels in channels:
            blocks.append(_conv_block(in_channels, out_channels))
            in_channels = out_channels
            side //= 2
        if side < 1:
            raise ValueError(f"input_size {input_size} is too small for {len(channels)} pooling blocks")
        self.input_size = input_size
        self.embedding_dim = embedding_dim
        self.features = nn.Sequential(*blocks, nn.Flatten())
        linear = nn.Linear(in_channels * side * side, embedding_dim)
        self.embed = nn.Sequential(linear, nn.BatchNorm1d(embedding_dim)) if embedding_bn else linear

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"expected {self.input_size}x{self.input_size} inputs, got {tuple(x.shape[-2:])}")
        return self.embed(self.features(x))
