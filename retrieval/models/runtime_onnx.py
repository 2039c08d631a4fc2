"""ONNX Runtime inference of an `EmbeddingModel` on a CPU: 1.25 to 1.29 times torch's images/s for the default model
on one thread (`benchmarks/inference_speed.py`), with the same vectors (1 - cosine at most 1.2e-7 on real photos).

Used by `Embedder` when the optional `[onnx]` extra is installed. A model is exported once (its batch norms folded,
its constants folded by onnxscript's optimizer) and the export is cached in the user's cache folder, named by the
model's content hash. Nothing in that folder is trusted: an export is used only when it says it is of this model
and gives this model's vectors on a probe batch; anything else (a damaged, truncated or substituted file) is
exported anew, and where no export works torch runs instead.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import threading
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from retrieval.atomic import atomic_write
from retrieval.errors import OutputWriteError
from retrieval.models.model import EmbeddingModel

CACHE_ENV = "SIMSEARCH_CACHE_DIR"
"""A folder for the cached exports instead of the user's cache folder (`platformdirs.user_cache_dir`)."""
HASH_KEY = "simsearch.content_hash"
"""The export's metadata entry naming the content hash of the model it was made from."""
MAX_PROBE_DISTANCE = 1e-3
"""The largest 1 - cosine between an export's vector and torch's, on the probe batch, for the export to be used."""
PROBE_IMAGES = 4
_FOLD_LIMIT = 1 << 26
"""Tensors up to this many elements are constant-folded on export. With onnxscript's default (8192 inputs) the
zero-padded kernels of EfficientNet's stride-2 convolutions stay Pad nodes, which ONNX Runtime 1.32 folds into a
model it then refuses as invalid; unfolded, the convolutions keep their batch norms and run at 0.4 times torch."""

log = logging.getLogger(__name__)


def onnx_installed() -> bool:
    """Whether the `[onnx]` extra's packages import."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
        import platformdirs  # noqa: F401
    except ImportError:
        return False
    return True


def cache_folder() -> Path:
    """Where exports are cached: `$SIMSEARCH_CACHE_DIR/onnx`, else the user's cache folder's `simsearch/onnx`."""
    import platformdirs

    root = os.environ.get(CACHE_ENV)
    return Path(root) / "onnx" if root else Path(platformdirs.user_cache_dir("simsearch")) / "onnx"


def probe_pixels(model: EmbeddingModel, images: int = PROBE_IMAGES) -> torch.Tensor:
    """A deterministic uint8 batch of the model's input shape: smooth random fields, so that the probe's
    activations look like a photo's (flat noise saturates some models' features)."""
    width, height = model.preprocessing.size
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(images, model.preprocessing.channels, 8, 8, generator=generator)
    fine = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    noise = torch.rand(fine.shape, generator=generator) * 0.1
    return ((fine * 0.9 + noise) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def export_onnx(module: nn.Module, model: EmbeddingModel) -> bytes:
    """The ONNX bytes of `module` (the model prepared for inference, or the model itself), with a dynamic batch
    size, labelled with `model`'s content hash. Raises whatever torch's exporter raises for a model it cannot
    export."""
    import onnx
    import onnxscript.optimizer

    prepared = copy.deepcopy(module).to(memory_format=torch.contiguous_format).eval()
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), _quiet("torch.onnx", "torch.export",
                                                                              "torch._dynamo", "onnxscript"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(prepared, (probe_pixels(model, 2),), input_names=["pixels"],
                                    output_names=["embeddings"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                    dynamo=True, optimize=False, verbose=False)
        proto = onnxscript.optimizer.optimize(program.model_proto, input_size_limit=_FOLD_LIMIT,
                                              output_size_limit=_FOLD_LIMIT)
    onnx.helper.set_model_props(proto, {HASH_KEY: model.content_hash})
    return proto.SerializeToString()


class OnnxRunner:
    """An export run by ONNX Runtime, with as many intra-op threads as torch has at each call (so the thread
    count `InferenceThreads` sets while decode workers share the cores holds for it too): one session per thread
    count, made on first use.

    Threads do not spin while waiting for work: the cores are shared with decode processes.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._sessions: dict[int, Any] = {}
        self._lock = threading.Lock()

    def _session(self, threads: int) -> Any:
        with self._lock:
            if threads not in self._sessions:
                import onnxruntime

                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
                options.log_severity_level = 3
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                self._sessions[threads] = onnxruntime.InferenceSession(self._data, options,
                                                                       providers=["CPUExecutionProvider"])
            return self._sessions[threads]

    def __call__(self, pixels: torch.Tensor) -> np.ndarray:
        """The embeddings (float32, one row an image) of a uint8 (B, H, W, C) batch."""
        array = np.ascontiguousarray(pixels.numpy())
        return self._session(torch.get_num_threads()).run(None, {"pixels": array})[0]


def onnx_runner(module: nn.Module, model: EmbeddingModel) -> OnnxRunner | None:
    """A runner for `model` (whose inference module is `module`), from the cached export when it is sound, else
    exported anew and cached; None where the model cannot be exported faithfully (torch then runs it)."""
    folder = cache_folder()
    path = folder / f"{model.content_hash}.onnx"
    expected = _probe_vectors(module, model)
    cached = _read(path)
    if cached is not None:
        runner = _checked_runner(cached, model, expected)
        if runner is not None:
            return runner
        log.info("ignoring the cached export %s: it is not of this model", path)
    try:
        data = export_onnx(module, model)
    except Exception as exc:  # torch's exporter raises many types for operators it cannot translate
        log.info("cannot export model %s to ONNX (%s); torch runs it", model.spec.name, exc)
        return None
    runner = _checked_runner(data, model, expected)
    if runner is None:
        log.info("the ONNX export of model %s differs from torch; torch runs it", model.spec.name)
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda temporary: temporary.write_bytes(data), "ONNX export")
    except (OSError, OutputWriteError) as exc:
        log.info("cannot cache the ONNX export (%s); it is used from memory", exc)
    return runner


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _probe_vectors(module: nn.Module, model: EmbeddingModel) -> np.ndarray:
    with torch.inference_mode():
        return module(probe_pixels(model)).float().numpy()


def _checked_runner(data: bytes, model: EmbeddingModel, expected: np.ndarray) -> OnnxRunner | None:
    """A runner for `data` if it is an export labelled with `model`'s content hash whose vectors for the probe
    batch are within `MAX_PROBE_DISTANCE` of `expected` (torch's); else None."""
    import onnx

    try:
        props = {p.key: p.value for p in onnx.load_model_from_string(data).metadata_props}
        if props.get(HASH_KEY) != model.content_hash:
            return None
        runner = OnnxRunner(data)
        found = runner(probe_pixels(model))
    except Exception:  # a damaged file: protobuf's and ONNX Runtime's errors have many types
        return None
    if found.shape != expected.shape or not np.isfinite(found).all():
        return None
    distance = 1.0 - np.sum(found * expected, axis=1) / (np.linalg.norm(found, axis=1) * np.linalg.norm(expected, axis=1))
    return runner if float(distance.max()) <= MAX_PROBE_DISTANCE else None


class _quiet:
    """Silence the named loggers below ERROR for a block (the exporter logs each step at INFO and WARNING)."""

    def __init__(self, *names: str) -> None:
        self._loggers = [logging.getLogger(name) for name in names]
        self._levels: list[int] = []

    def __enter__(self) -> None:
        self._levels = [logger.level for logger in self._loggers]
        for logger in self._loggers:
            logger.setLevel(logging.ERROR)

    def __exit__(self, *_: object) -> None:
        for logger, level in zip(self._loggers, self._levels):
            logger.setLevel(level)
