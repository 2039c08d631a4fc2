"""Run a model over decoded batches on the best device available."""

from __future__ import annotations

import copy
import os
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from retrieval.errors import ModelError
from retrieval.models.allocator import keep_freed_memory
from retrieval.models.devices import available_device
from retrieval.models.model import EmbeddingModel
from retrieval.models.runtime_onnx import OnnxRunner, onnx_installed, onnx_runner

Runtime = Literal["auto", "torch", "onnxruntime"]
RUNTIME_ENV = "SIMSEARCH_RUNTIME"
"""`torch` forces torch where the runtime is "auto" (the default of every command)."""


def pick_device(requested: str | None = None) -> torch.device:
    """`requested` if given ("cpu", "cuda", "cuda:1"), else CUDA when torch sees one, else CPU; `DeviceError`
    for a device that does not exist here."""
    return available_device(requested)


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a convolution into it (inference only).

    One pass over memory less per layer: about a third faster for EfficientNet-Lite0 on a CPU.
    """
    for sequence in module.modules():
        if isinstance(sequence, nn.Sequential):
            for i in range(len(sequence) - 1):
                conv, norm = sequence[i], sequence[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                    sequence[i] = fuse_conv_bn_eval(conv, norm)
                    sequence[i + 1] = nn.Identity()
    return module


def pins_memory(device: torch.device) -> bool:
    """Whether batches for `device` should be decoded into pinned memory (for fast, asynchronous copies)."""
    return device.type == "cuda"


class Embedder:
    """A model prepared for inference on a device; turns uint8 (B, H, W, C) batches into float32
    embeddings.

    It runs a copy of the model's module structure that shares the model's tensors (copying them
    would cost a third of a second on every query): in the copy, batch norms are folded into the
    convolutions and, on a CPU, the layout is channels-last (the decoded batches already are). The
    model itself keeps its structure, so it can still be saved, hashed or trained (make a new embedder
    after changing its weights); its tensors move to the embedder's device. On CUDA the forward pass
    runs under autocast (float16); on a CPU the process keeps the memory a batch frees for the next one
    (`keep_freed_memory`).

    On a CPU, `runtime` "auto" runs the model with ONNX Runtime (`retrieval.models.runtime_onnx`: the same vectors,
    faster) when the `[onnx]` extra is installed, the model exports faithfully and `$SIMSEARCH_RUNTIME` is not
    `torch`; else torch. "torch" always runs torch; "onnxruntime" raises `ModelError` where it cannot be used.
    `runtime` says which runs: "torch" or "onnxruntime".
    """

    def __init__(self, model: EmbeddingModel, device: torch.device | None = None, runtime: Runtime = "auto") -> None:
        self.device = device or pick_device()
        self.content_hash = model.content_hash
        shared = {id(tensor): tensor for tensor in (*model.parameters(), *model.buffers())}
        self.model = fold_batch_norms(copy.deepcopy(model.eval(), shared)).to(self.device)
        if self.device.type == "cpu":
            self.model = self.model.to(memory_format=torch.channels_last)
            keep_freed_memory()
        self._onnx = _onnx_runner(self.model, model, self.device, runtime)
        self.runtime = "onnxruntime" if self._onnx is not None else "torch"

    @property
    def pin_memory(self) -> bool:
        return pins_memory(self.device)

    def embed(self, pixels: torch.Tensor) -> np.ndarray:
        """Embeddings of a uint8 batch; `ModelError` if any is not finite (weights or preprocessing that
        overflow), which would otherwise be stored and poison every distance to it."""
        if self._onnx is not None:
            vectors = self._onnx(pixels)
        else:
            with torch.inference_mode(), torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
                out = self.model(pixels.to(self.device, non_blocking=True))
            vectors = out.float().cpu().numpy()
        if not np.isfinite(vectors).all():
            raise ModelError("the model gives NaN or infinite embeddings (broken weights or preprocessing)")
        return vectors


def _onnx_runner(module: nn.Module, model: EmbeddingModel, device: torch.device, runtime: Runtime) -> OnnxRunner | None:
    """The ONNX Runtime runner `runtime` asks for and this device and install allow, else None (torch)."""
    if runtime == "torch" or (runtime == "auto" and os.environ.get(RUNTIME_ENV, "").strip().lower() == "torch"):
        return None
    if device.type == "cpu" and onnx_installed():
        runner = onnx_runner(module, model)
        if runner is not None or runtime == "auto":
            return runner
    if runtime == "auto":
        return None
    raise ModelError(f"the model {model.spec.name} cannot run on ONNX Runtime here (it needs a CPU, the [onnx] "
                     f"extra installed and a model that exports faithfully)")
