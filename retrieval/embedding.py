"""Run a model over decoded batches on the best device available."""

from __future__ import annotations

import numpy as np
import torch

from retrieval.model import EmbeddingModel


def pick_device(requested: str | None = None) -> torch.device:
    """`requested` if given ("cpu", "cuda", "cuda:1"), else CUDA when torch sees one, else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Embedder:
    """Holds a model on a device; turns uint8 (B, H, W, C) batches into float32 embeddings.

    On CUDA the forward pass runs under autocast (float16), the embeddings come back as float32.
    """

    def __init__(self, model: EmbeddingModel, device: torch.device | None = None) -> None:
        self.device = device or pick_device()
        self.model = model.to(self.device).eval()
        if self.device.type == "cpu":
            self.model = self.model.to(memory_format=torch.channels_last)

    @property
    def pin_memory(self) -> bool:
        return self.device.type == "cuda"

    def embed(self, pixels: torch.Tensor) -> np.ndarray:
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            out = self.model(pixels.to(self.device, non_blocking=True))
        return out.float().cpu().numpy()
