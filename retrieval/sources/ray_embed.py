"""Decode and embed on a Ray cluster (`simsearch index --ray [ADDRESS]`), with the local pipeline's own code.

The driver (`indexer.pipeline`) plans exactly as a local run and consumes the results the same way. Here, a Ray
Data job runs the two halves of `retrieval.sources`, reading, hashing and decoding files (`decode_source`) and
embedding the decoded batches (`Embedder`): on a cluster with GPUs, tasks decode on the CPUs for one model actor
a GPU; without GPUs, one model actor a CPU decodes its own batches (`plan_actors`). Inputs and results are the
same plain data as locally (`Source` in, `SourceResult` out), so the rows and vectors equal a local run's. Ray is
an optional extra; nothing else imports it.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import SimsearchError
from retrieval.models.allocator import ONE_ARENA
from retrieval.sources.decode import Source, SourceResult, decode_source
from retrieval.sources.images import Preprocessing

logger = logging.getLogger(__name__)
_MISSING_MODULE = re.compile(r"No module named '[^']+'")

LOCAL_CPUS = None
"""A local Ray (no address given) takes every core, as a local run does."""
CONNECT_SECONDS = 5
RETRIES = 3
"""A decode task or a model actor that dies is retried or restarted this many times, then the job fails."""
GPU_BATCH_SIZE = 256
"""Images a GPU model actor embeds a call (256 x 224 x 224 x 3 bytes of pixels is 39 MB): a GPU's batch, where a
CPU's is the run's --batch-size. Not yet measured on a GPU."""
RAY_ENVIRONMENT = {
    "RAY_BACKEND_LOG_LEVEL": "fatal",  # Ray's C++ notices (retries, a constructor in the object store) stay off
    "RAY_IGNORE_UNHANDLED_ERRORS": "1",  # a failed task's traceback: the job's failure says it in a line
    "RAY_task_oom_retries": str(RETRIES),  # a task killed for memory then fails: by default Ray retries it forever
}
"""Set for `ray.init` unless the user has set them: the driver reads them, and so does a local Ray it starts."""
_ACTOR_ENVIRONMENT = {"env_vars": ONE_ARENA}
"""A model actor's process starts with these: Ray Data calls it on a thread that is not the main one."""


class RayUnavailableError(SimsearchError):
    """No Ray cluster at the address given, or Ray is not installed."""


class RayJobError(SimsearchError):
    """The cluster could not run the job: a worker failed for good."""


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
        from retrieval.models.embedding import Embedder, pick_device
        from retrieval.models.model import load_model

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


class _DecodeAndEmbed(_Embed):
    """A model actor of a cluster without GPUs, which decodes its own batches: the same cores would decode them
    anyway, and pixels handed between processes cost the copies, the object store and the waits between tasks."""

    def __init__(self, model_bytes: Any, device: str | None, threads: int, prep: Preprocessing,
                 max_pixels: int) -> None:
        super().__init__(model_bytes, device, threads)
        self.prep = prep
        self.max_pixels = max_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return super().__call__(_decode(batch, self.prep, self.max_pixels))


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Ray for the block, started as `_start_ray` does unless this process is connected already; a Ray started here
    is stopped (a local one) or left (a cluster) when the block ends. Left to the interpreter's exit, Ray's own
    shutdown would first wait half a second for log lines that this driver does not print."""
    if not _start_ray(address):
        yield
        return
    import ray

    try:
        yield
    finally:
        ray.shutdown()


def _start_ray(address: str | None) -> bool:
    """`ray.init` at `address` (a new local Ray of this machine's cores when None), unless this process is
    connected already; whether it connected now. `RayUnavailableError` in one line for an address with no cluster
    behind it, or no Ray installed."""
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailableError("--ray needs Ray: pip install 'simsearch[ray]'") from exc
    if ray.is_initialized():
        return False
    if address:
        _check_reachable(address)
    for name, value in RAY_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    try:
        with _quiet_stderr():
            _init(ray, address)
        _quiet_cluster_notices(ray)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        detail = " ".join(str(exc).split())[:200]
        if not address:
            raise RayUnavailableError(f"could not start a local Ray: {detail}") from exc
        raise RayUnavailableError(  # something answers at the address, but no Ray this driver may join
            f"could not join the Ray cluster at {address}: {detail} (a cluster with token authentication needs "
            "RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN)") from exc
    return True


def _init(ray: Any, address: str | None) -> None:
    if address:
        ray.init(address=address, logging_level=logging.CRITICAL, log_to_driver=False)
    else:  # "local" starts one for this run, never joining a cluster that happens to run here
        ray.init(address="local", num_cpus=LOCAL_CPUS, include_dashboard=False, logging_level=logging.CRITICAL,
                 log_to_driver=False)


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """This process's standard error (the descriptor, which Ray's C++ core writes to) sent to /dev/null: while
    connecting, Ray's core prints its log level and retries in lines of its own; what failed is the run's own
    one-line error."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _quiet_cluster_notices(ray: Any) -> None:
    """Ray prints each notice the cluster sends this driver (a task retried, a worker killed for memory: dozens of
    lines each) to standard output from a thread of its own. They go to this module's log instead: the run's
    progress and its one-line error say what became of the job."""
    from ray._private import worker

    if hasattr(worker, "print_to_stdstream"):
        worker.print_to_stdstream = lambda data, ignore_prefix=False: logger.debug("%s", data.get("lines"))


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


@dataclass(frozen=True)
class ActorPlan:
    """The pool of model actors for a cluster: how many, what each asks of Ray, its torch threads and batch."""

    actors: int
    gpus: int
    cpus: int
    threads: int
    batch_size: int
    decodes: bool
    """The actors decode their own batches; otherwise Ray tasks decode them on the CPUs."""


def plan_actors(resources: Mapping[str, float], batch_size: int) -> ActorPlan:
    """One actor a GPU, each embedding `GPU_BATCH_SIZE` images a call (Ray Data gathers the decoded batches) unless
    `batch_size` is larger, with every CPU left to decoding tasks. Without GPUs, one actor a CPU, of one thread,
    decoding and embedding its own batches (`_DecodeAndEmbed`). On 2 cores, decode tasks feeding one such actor
    took 1.28x a local run's time, one core waiting on the other; with an actor a core, the whole run took 1.17x
    (`benchmarks/ray_overhead.py`, a running Ray)."""
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return ActorPlan(actors=gpus, gpus=1, cpus=0, threads=1, batch_size=max(batch_size, GPU_BATCH_SIZE),
                         decodes=False)
    return ActorPlan(actors=_cpus(resources), gpus=0, cpus=1, threads=1, batch_size=batch_size, decodes=True)


def _cpus(resources: Mapping[str, float]) -> int:
    return max(1, int(resources.get("CPU", 1)))


def ray_results(sources: Sequence[Source], model_file: Path, prep: Preprocessing, *, address: str | None,
                batch_size: int, max_pixels: int, device: str | None = None) -> Iterator[list[SourceResult]]:
    """The results of `sources`, decoded and embedded on a Ray cluster as `plan_actors` lays out, batch by batch (in
    the order they are done), in a `ray_session` of `address`. `RayJobError` when the cluster cannot run the job
    (a worker without simsearch, one that ran out of memory)."""
    with ray_session(address):
        yield from _job_results(sources, model_file, prep, batch_size, max_pixels, device)


def _job_results(sources: Sequence[Source], model_file: Path, prep: Preprocessing, batch_size: int,
                 max_pixels: int, device: str | None) -> Iterator[list[SourceResult]]:
    import ray
    from ray import data as ray_data

    ray_data.DataContext.get_current().enable_progress_bars = False  # the driver draws the run's own progress
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # its failures are the job's one-line error
    resources = ray.cluster_resources()
    plan = plan_actors(resources, batch_size)
    items = [{"key": s.key, "path": s.path or "", "content_hash": s.content_hash or ""} for s in sources]
    model = ray.put(model_file.read_bytes())
    with warnings.catch_warnings():  # Ray 2.60 deprecates passing retry limits so, and names no other way
        from ray.util.annotations import RayDeprecationWarning

        warnings.simplefilter("ignore", RayDeprecationWarning)
        if plan.decodes:
            embedded = _decode_and_embed(ray_data, items, model, plan, prep, max_pixels)
        else:
            embedded = _decode_then_embed(ray_data, items, model, plan, _cpus(resources), prep, max_pixels, device,
                                          batch_size)
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
        raise _job_failure(exc) from exc


def _decode_and_embed(ray_data: Any, items: list[dict[str, Any]], model: Any, plan: ActorPlan, prep: Preprocessing,
                      max_pixels: int) -> Any:
    """A cluster without GPUs: each actor decodes and embeds a block of rows at a time, in batches. Blocks of about
    one batch (up to 8 in runs of over 64 batches an actor) keep the actors busy to the end: the last block to
    finish starts at most a block's time after the others'."""
    batches = _batches(len(items), plan.batch_size)
    data = ray_data.from_items(items, override_num_blocks=max(1, min(batches, max(64 * plan.actors,
                                                                                   batches // 8))))
    return data.map_batches(_DecodeAndEmbed, fn_constructor_args=(model, "cpu", plan.threads, prep, max_pixels),
                            batch_size=plan.batch_size, batch_format="numpy", **_actor_pool(ray_data, plan, batches))


def _decode_then_embed(ray_data: Any, items: list[dict[str, Any]], model: Any, plan: ActorPlan, cpus: int,
                       prep: Preprocessing, max_pixels: int, device: str | None, batch_size: int) -> Any:
    """A cluster with GPUs: tasks decode on the CPUs, a block of up to 8 batches each (Ray Data waits about 0.1 s
    between one task and the next), and hand each batch on to the GPUs' actors as its own block once decoded:
    without that, a block's batches would wait for its last."""
    batches = _batches(len(items), batch_size)
    data = ray_data.from_items(items, override_num_blocks=max(1, min(batches, max(4 * cpus, batches // 8))))
    data.context.target_max_block_size = batch_size * prep.size[0] * prep.size[1] * prep.channels // 2
    decoded = data.map_batches(_decode, fn_kwargs={"prep": prep, "max_pixels": max_pixels}, batch_size=batch_size,
                               batch_format="numpy", num_cpus=1, max_retries=RETRIES)
    return decoded.map_batches(_Embed, fn_constructor_args=(model, device, plan.threads), batch_size=plan.batch_size,
                               batch_format="numpy",
                               **_actor_pool(ray_data, plan, _batches(len(items), plan.batch_size)))


def _actor_pool(ray_data: Any, plan: ActorPlan, calls: int) -> dict[str, Any]:
    """`map_batches`'s arguments for `plan`'s pool of model actors, no larger than the `calls` it has to make."""
    return {"compute": ray_data.ActorPoolStrategy(size=max(1, min(plan.actors, calls))), "num_gpus": plan.gpus,
            "num_cpus": plan.cpus, "runtime_env": _ACTOR_ENVIRONMENT, "max_restarts": RETRIES,
            "max_task_retries": RETRIES}


def _batches(rows: int, batch_size: int) -> int:
    return -(-rows // batch_size)


def _job_failure(exc: BaseException) -> RayJobError:
    """What stopped the job, in one line: a worker out of memory, workers without simsearch, or Ray's own words."""
    from ray.exceptions import OutOfMemoryError

    causes = list(_causes(exc))
    if any(isinstance(cause, OutOfMemoryError) for cause in causes):
        return RayJobError("a Ray worker ran out of memory (killed by Ray's memory monitor and retried "
                           f"{RETRIES} times): give the workers more memory, or lower --batch-size or --max-pixels")
    missing = next((found for cause in causes if (found := _MISSING_MODULE.search(str(cause)))), None)
    if missing is not None:  # Ray reports a worker's failed import as a system error with the import's words
        return RayJobError(f"the Ray workers cannot import simsearch ({missing.group(0)}): install the same "
                           "simsearch on every node of the cluster")
    return RayJobError(f"the Ray job failed: {_one_line(causes[-1])}")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it wraps: Ray's `cause` of a worker's exception, Python's chain, to the innermost."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return " ".join((text[-1] if text else type(exc).__name__).split())[:300]
