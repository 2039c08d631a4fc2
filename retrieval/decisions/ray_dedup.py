"""Dedup over shards on a Ray cluster: the Ray Data form of `simsearch dedup SHARDS --manifest`.

Ray tasks read the shards (`retrieval.sources.shards`, a task a shard), model actors decode and embed the samples
(`decode_source` and `Embedder`, as `retrieval.sources.ray_embed`'s actors do) and read each one's pixel signature
(`retrieval.decisions.pixel_rule`) while its bytes are at hand; the driver collects the vectors, in the shards' order,
and decides every sample as the one-machine run does (`retrieval.decisions.sample_groups.decide_samples`), so the
manifest is the same. `embed_samples` is the step for a Ray Dataset of one's own: `ds.map_batches` with the model in
actors, adding each sample's vector, content hash, size and signature to its key and bytes.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.decisions.pixel_rule import SIGNATURE_SIDE, PixelSignature
from retrieval.decisions.sample_groups import (STATUS_SKIPPED, EmbeddedSample, SampleDecision, SeenSamples,
                                               decide_samples)
from retrieval.decisions.sample_groups import signature_of_bytes
from retrieval.errors import ShardError
from retrieval.sources.decode import Source, decode_source
from retrieval.sources.images import DEFAULT_MAX_PIXELS
from retrieval.sources.ray_embed import RETRIES, _Embed, plan_actors, ray_session
from retrieval.sources.shard_samples import UniqueKeys
from retrieval.sources.shards import MAX_SAMPLE_BYTES, ShardColumns, read_shard

_SIDE = (SIGNATURE_SIDE, SIGNATURE_SIDE, 3)


def _read(row: dict[str, Any], columns: ShardColumns, max_bytes: int) -> list[dict[str, Any]]:
    """A shard's samples as rows (key, shard, image bytes, error), then a row for the shard's failure if any."""
    shard = Path(row["shard"])
    rows = []
    try:
        for sample in read_shard(shard, columns, max_bytes):
            rows.append({"key": sample.key, "shard": sample.shard, "image": sample.data or b"",
                         "error": sample.error or "", "skipped": False})
    except ShardError as exc:
        rows.append({"key": "", "shard": str(shard), "image": b"", "error": str(exc), "skipped": True})
    return rows


class _EmbedSamples(_Embed):
    """A model actor: decodes its batch's image bytes, embeds them and reads their pixel signatures."""

    def __init__(self, model_bytes: Any, threads: int, max_pixels: int) -> None:
        super().__init__(model_bytes, "cpu", threads)
        self.max_pixels = max_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # type: ignore[override]
        import torch

        prep = self.embedder.model.preprocessing
        decoded = [decode_source(Source(number, data=bytes(data)), prep, self.max_pixels) if data and not error
                   else None for number, (data, error) in enumerate(zip(batch["image"], batch["error"]))]
        ok = [pixels for item in decoded if item is not None and (pixels := item[1]) is not None]
        vectors = self.embedder.embed(torch.from_numpy(np.stack(ok))) if ok else None
        rows = iter(vectors if vectors is not None else [])
        dim = self.embedder.model.embedding_dim
        out: dict[str, list[Any]] = {name: [] for name in ("content_hash", "width", "height", "vector", "small",
                                                           "spread")}
        errors = []
        for number, item in enumerate(decoded):
            result = item[0] if item is not None else None
            good = item is not None and item[1] is not None
            look = signature_of_bytes(bytes(batch["image"][number])) if good else None
            errors.append(str(batch["error"][number]) if result is None else (result.error or ""))
            out["content_hash"].append((result.content_hash if result is not None else None) or "")
            out["width"].append((result.width if result is not None else None) or 0)
            out["height"].append((result.height if result is not None else None) or 0)
            out["vector"].append(next(rows) if good else np.zeros(dim, np.float32))
            out["small"].append(look.small.astype(np.float32).ravel() if look is not None
                                else np.zeros(int(np.prod(_SIDE)), np.float32))
            out["spread"].append(look.spread if look is not None else -1.0)
        return {"key": batch["key"], "shard": batch["shard"], "skipped": batch["skipped"],
                "error": np.array(errors, object), "content_hash": np.array(out["content_hash"], object),
                "width": np.array(out["width"], np.int64), "height": np.array(out["height"], np.int64),
                "vector": np.stack(out["vector"]).astype(np.float32), "small": np.stack(out["small"]),
                "spread": np.array(out["spread"], np.float64)}


def embed_samples(dataset: Any, model_file: Path, *, batch_size: int = 32,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> Any:
    """`dataset` (a Ray Dataset with columns `key`, `shard`, `image` of encoded bytes, `error` and `skipped`) with
    each sample embedded by model actors, one a CPU of the cluster: adds `content_hash`, `width`, `height`,
    `vector`, `small` and `spread` (its pixel signature; -1 where it has none)."""
    import ray
    from ray import data as ray_data

    from ray.util.annotations import RayDeprecationWarning

    plan = plan_actors(ray.cluster_resources(), batch_size)
    model_ref = ray.put(model_file.read_bytes())
    with warnings.catch_warnings():  # Ray 2.60 deprecates passing retry limits so, and names no other way
        warnings.simplefilter("ignore", RayDeprecationWarning)
        return dataset.map_batches(_EmbedSamples, fn_constructor_args=(model_ref, plan.threads, max_pixels),
                                   batch_size=batch_size, batch_format="numpy",
                                   compute=ray_data.ActorPoolStrategy(size=plan.actors), num_cpus=1,
                                   max_restarts=RETRIES, max_task_retries=RETRIES)


def dedup_shards_on_ray(shards: Sequence[Path], model_file: Path, threshold: float, *,
                        address: str | None = None, columns: ShardColumns = ShardColumns(),
                        seen: SeenSamples | None = None, lookalikes: bool = False, batch_size: int = 32,
                        max_bytes: int = MAX_SAMPLE_BYTES) -> list[SampleDecision]:
    """The manifest's rows of `shards` (as `retrieval.decisions.shard_dedup.dedup_shards` gives them: one a sample in
    the shards' order, then one a shard skipped), embedded by the model in `model_file` on the Ray cluster at
    `address` (a local Ray when None)."""
    with ray_session(address):
        from ray import data as ray_data

        context = ray_data.DataContext.get_current()
        context.enable_progress_bars = False
        context.execution_options.preserve_order = True  # the shards' order: keys and keepers as one machine's
        items = ray_data.from_items([{"shard": str(shard)} for shard in shards], override_num_blocks=len(shards))
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # a failure is the job's own error
        # Reading takes no CPU of Ray's: the model actors take one each, and a read task waiting for a CPU would
        # wait for ever.
        samples = items.flat_map(_read, fn_kwargs={"columns": columns, "max_bytes": max_bytes}, num_cpus=0)
        embedded = embed_samples(samples, model_file, batch_size=batch_size)
        keys = UniqueKeys(set(seen.keys) if seen is not None else set())
        found: list[EmbeddedSample] = []
        looks: list[PixelSignature | None] = []
        skipped: list[SampleDecision] = []
        for batch in embedded.iter_batches(batch_size=256, batch_format="numpy"):
            for number in range(len(batch["key"])):
                if batch["skipped"][number]:
                    skipped.append(SampleDecision(None, str(batch["shard"][number]), keep=None,
                                                  status=STATUS_SKIPPED, error=str(batch["error"][number])))
                    continue
                error = str(batch["error"][number]) or None
                key = keys.unique(str(batch["key"][number]), str(batch["shard"][number]))
                found.append(EmbeddedSample(
                    key, str(batch["shard"][number]), str(batch["content_hash"][number]) or None,
                    int(batch["width"][number]) or None, int(batch["height"][number]) or None,
                    None if error else np.asarray(batch["vector"][number], np.float32), error))
                spread = float(batch["spread"][number])
                looks.append(None if spread < 0 else PixelSignature(
                    np.asarray(batch["small"][number], np.float32).reshape(_SIDE), spread,
                    int(batch["width"][number]), int(batch["height"][number])))
    decisions = decide_samples(found, threshold, lambda number: looks[number], seen, lookalikes)
    return [*decisions.rows, *skipped]
