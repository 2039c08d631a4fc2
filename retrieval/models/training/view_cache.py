"""Edited views of training photos, and the activations a frozen backbone computes for them once.

Training the last stages of EfficientNet-Lite0 on two CPU cores is possible because the stages before them are
frozen: their output for each view is computed once (`stage_activations`, stored as float16) and the trained stages
run on it for as many steps as wanted, a tenth of a full forward pass each. The views are fixed for the whole run,
so each photo gets many (`rendered_views`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from retrieval.models.encoders.efficientnet_lite import EfficientNetLite0, resized_input
from retrieval.models.model import EmbeddingModel
from retrieval.models.training.photo_edits import user_edit

EDIT_SIDE = 640
"""Photos are edited at this long side (as most collections' photos are shown), then resized for the model."""


def _photo(path: Path) -> Image.Image:
    image = Image.open(path)
    image.draft("RGB", (EDIT_SIDE, EDIT_SIDE))
    image = ImageOps.exif_transpose(image.convert("RGB"))
    scale = EDIT_SIDE / max(image.size)
    if scale >= 1:
        return image
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)


def _views_of(task: tuple[Path, int, int, tuple[int, int]]) -> np.ndarray:
    path, views, seed, size = task
    photo = _photo(path)
    rng = random.Random(seed)
    edited = [photo] + [user_edit(photo, rng) for _ in range(views)]
    # resized as `simsearch index` resizes a decoded file: straight to the model's size, bilinear
    return np.stack([np.asarray(view.resize(size, Image.Resampling.BILINEAR), dtype=np.uint8) for view in edited])


def rendered_views(paths: list[Path], views: int, size: tuple[int, int], seed: int = 0, workers: int = 2
                   ) -> np.ndarray:
    """uint8 (N, 1 + views, height, width, 3): each photo as it is, then `views` user edits of it
    (`photo_edits.user_edit`), each photo's seeded by `seed` and its position alone, so the set does not depend on
    `workers`."""
    tasks = [(path, views, 1000 + seed * 1_000_003 + i, size) for i, path in enumerate(paths)]
    with ProcessPoolExecutor(workers) as pool:
        return np.stack(list(pool.map(_views_of, tasks, chunksize=4)))


@torch.inference_mode()
def stage_activations(model: EmbeddingModel, pixels: np.ndarray, stage: int, batch_size: int = 64,
                      progress: Callable[[int], None] | None = None, scale: float = 1.0) -> Tensor:
    """float16 activations entering `stage` of the model's EfficientNet-Lite0 backbone for uint8 images
    (..., H, W, 3), resized by `scale` as the backbone's multi-scale pass resizes them; the leading dimensions
    are kept."""
    backbone = model.backbone
    if not isinstance(backbone, EfficientNetLite0):
        raise TypeError("stage activations need the efficientnet-lite0 backbone")
    flat = pixels.reshape(-1, *pixels.shape[-3:])
    out = []
    for start in range(0, len(flat), batch_size):
        x = resized_input(model.normalise_input(torch.from_numpy(flat[start:start + batch_size])), scale)
        out.append(backbone.stages_before(x.contiguous(memory_format=torch.channels_last), stage).half())
        if progress is not None:
            progress(min(batch_size, len(flat) - start))
    activations = torch.cat(out)
    return activations.view(*pixels.shape[:-3], *activations.shape[1:])
