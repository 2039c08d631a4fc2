"""Turn uint8 images into L2-normalised embeddings with a trained encoder."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

Embedder = Callable[[Tensor], Tensor]


def make_embedder(
    model: nn.Module,
    preprocess: Callable[[Tensor], Tensor],
    batch_size: int = 512,
    device: str = "cpu",
) -> Embedder:
    """A function mapping uint8 images to L2-normalised float embeddings on the CPU.

    The model is put in eval mode (batch-norm running statistics) each time it is called.
    """

    @torch.no_grad()
    def embed(images: Tensor) -> Tensor:
        model.eval()
        chunks = [
            F.normalize(model(preprocess(images[i : i + batch_size].to(device))), dim=1).cpu()
            for i in range(0, images.shape[0], batch_size)
        ]
        return torch.cat(chunks)

    return embed
