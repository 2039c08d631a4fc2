"""Decode and embed on a Ray cluster (`simsearch index --ray [ADDRESS]`), with the local pipeline's own code.

The driver (`indexer.pipeline`) plans exactly as a local run and consumes the results the same way. Here, a Ray
Data job runs the two halves of `retrieval.sources`: tasks read, hash and decode files on CPUs
(`decode_source`), and a pool of model actors embeds the decoded batches (`Embedder`), on GPUs where the cluster
has them. Inputs and results are the same plain data as locally (`Source` in, `SourceResult` out), so the rows
and vectors equal a local run's. Ray is an optional extra; nothing else imports it.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import SimsearchError
from retrieval.images import Preprocessing
from retrieval.sources.decode import Source, SourceResult, decode_source

LOCAL_CPUS = None
"""A local Ray (no address given) takes every core, as a local run does."""
CONNECT_SECONDS = 5


class RayUnavailableError(SimsearchError):
    """No Ray cluster at the address given, or Ray is not installed, or a worker failed for good."""


def _decode(batch: dict[str, np.ndarray], prep: Preprocessing, max_pixels: int) -> dict[str, np.ndarray]:
    """A Ray Data batch of sources decoded: their pixels (zeros where one failed) and what became of each."""
    decoded = [decode_source(Source(int(key), path=str(path), content_hash=str(digest) or None), prep, max_pixels)
               for key, path, digest in zip(batch["key"], batch["path"], batch["content_hash"])]
    shape = (prep.size[1], prep.size[0], prep.channels)  # as `decode_image` gives them
    pixels = np.stack([p if p is not None else np.zeros(shape, np.uint8) for _, p in decoded]) \
        if decoded else np.zeros((0, *shape), np.uint8)
    return {"key": np.array([r.key for r, _ in decoded], np.int64),
            "content_hash": np.array([r.content_hash or "" for r, _ in decoded], object),
            "width": np.array([r.width or 0 for r, _ in decoded], np.int64),
            "height": np.array([r.height or 0 for r, _ in decoded], np.int64),
            "error": np.array([r.error or "" for r, _ in decoded], object), "pixels": pixels}


class _Embed:
    """A model actor: loads the model once (from the bytes the driver shipped) and embeds decoded batches."""

    def __init__(self, model_bytes: Any, device: str | None, threads: int) -> None:
        import ray
        import torch

        if isinstance(model_bytes, ray.ObjectRef):  # shipped once through the object store
            model_bytes = ray.get(model_bytes)
        from retrieval.embedding import Embedder, pick_device
        from retrieval.model import load_model

        torch.set_num_threads(max(1, threads))
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.safetensors"
            path.write_bytes(model_bytes)
            model = load_model(path)
        self.embedder = Embedder(model, pick_device(device))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        ok = batch["error"] == ""
        dim = self.embedder.model.embedding_dim
        vectors = np.zeros((len(ok), dim), np.float32)
        if ok.any():
            vectors[ok] = self.embedder.embed(torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok])))
        return {key: batch[key] for key in ("key", "content_hash", "width", "height", "error")} | {"vector": vectors}


def start_ray(address: str | None) -> Any:
    """`ray.init` at `address` (a local Ray of this machine's cores when None); `RayUnavailableError` in one line
    for an address with no cluster behind it, or no Ray installed."""
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailableError("--ray needs Ray: pip install 'simsearch[ray]'") from exc
    if ray.is_initialized():
        return ray
    if address:
        _check_reachable(address)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        if address:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        else:
            ray.init(num_cpus=LOCAL_CPUS, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayUnavailableError(f"no Ray cluster at {address or 'a local Ray'}: "
                                  f"{' '.join(str(exc).split())[:200]}") from exc
    return ray


def _check_reachable(address: str) -> None:
    """A `host:port` (or `ray://host:port`) address answers a TCP connection within `CONNECT_SECONDS`: ray.init
    itself retries an unreachable one for minutes."""
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", or a form ray.init resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise RayUnavailableError(f"no Ray cluster at {address}: {exc.strerror or exc}") from exc


def ray_results(sources: Sequence[Source], model_file: Path, prep: Preprocessing, *, address: str | None,
                batch_size: int, max_pixels: int, device: str | None = None) -> Iterator[list[SourceResult]]:
    """The results of `sources`, decoded by Ray tasks and embedded by a pool of model actors, batch by batch in
    order. `RayUnavailableError` when the cluster cannot run the job (a worker without simsearch, one that ran
    out of memory)."""
    ray = start_ray(address)
    from ray import data as ray_data

    ray_data.DataContext.get_current().enable_progress_bars = False  # the driver draws the run's own progress
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    actors = gpus if gpus else max(1, cpus // 2)
    threads = 1 if gpus else max(1, cpus // (2 * actors))
    items = [{"key": s.key, "path": s.path or "", "content_hash": s.content_hash or ""} for s in sources]
    blocks = max(1, min(len(items), 4 * cpus, max(1, len(items) // batch_size)))
    data = ray_data.from_items(items, override_num_blocks=blocks)
    decoded = data.map_batches(_decode, fn_kwargs={"prep": prep, "max_pixels": max_pixels}, batch_size=batch_size,
                               batch_format="numpy", num_cpus=1, max_retries=3)
    embedded = decoded.map_batches(
        _Embed, fn_constructor_args=(ray.put(model_file.read_bytes()), device if gpus else "cpu", threads),
        batch_size=batch_size, batch_format="numpy", concurrency=actors, num_gpus=1 if gpus else 0,
        num_cpus=0 if gpus else threads, max_restarts=3, max_task_retries=3)
    try:
        for batch in embedded.iter_batches(batch_size=batch_size, batch_format="numpy"):
            yield [SourceResult(int(key), str(digest) or None, int(width) or None, int(height) or None,
                                str(error) or None, None if error else np.asarray(vector, np.float32))
                   for key, digest, width, height, error, vector in zip(
                       batch["key"], batch["content_hash"], batch["width"], batch["height"], batch["error"],
                       batch["vector"])]
    except Exception as exc:  # Ray reports a worker's failure as its own exception types
        if isinstance(exc, SimsearchError):
            raise
        raise RayUnavailableError(f"the Ray job failed: {' '.join(str(exc).split())[:300]}") from exc
