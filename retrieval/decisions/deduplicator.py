"""Dedup as a step of a Python job: batches of keys and images in, keep / duplicate_of / distance out, with the
samples kept so far carried from one batch to the next.

Each batch is decoded and embedded as `simsearch index` does (encoded bytes; a decoded uint8 array is encoded as
a lossless PNG first, so that it goes the same way) and decided by `retrieval.decisions.sample_groups`: a sample within
the threshold of one kept in an earlier batch is its duplicate (what was handed on stays handed on), and the rest of
the batch is grouped among itself. So the answers of a batch never change later, and a set given as one batch or
as several differs only where a group's keeper by size would have come in a later batch.

The pixel signature (`retrieval.decisions.pixel_rule`) of every kept sample is carried with its vector, so tiny and flat
images are judged on their pixels across batches too (about 2 ms a photo, beside the embedding's 20-30 on a CPU
core).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from retrieval.decisions.pixel_rule import PixelSignature
from retrieval.decisions.sample_groups import (EmbeddedSample, SampleDecision, SeenSamples, decide_samples,
                                               signature_of_bytes)
from retrieval.errors import ArgumentTypeError, InvalidArgumentError
from retrieval.models.embedding import Embedder
from retrieval.models.model import EmbeddingModel, load_default_model
from retrieval.sources.embed import embed_sources

Image = bytes | np.ndarray


class Deduplicator:
    """Near-duplicate decisions batch by batch. `threshold` defaults to the model's shipped calibration (as
    `simsearch dedup` chooses it with no index); `seen` starts it from samples kept before
    (`retrieval.decisions.sample_store`)."""

    def __init__(self, model: EmbeddingModel | None = None, threshold: float | None = None,
                 device: str | None = None, lookalikes: bool = False, seen: SeenSamples | None = None,
                 shard: str = "") -> None:
        from retrieval.collection import Collection
        from retrieval.models.embedding import pick_device

        self.model = model or load_default_model()
        self.embedder = Embedder(self.model, pick_device(device))
        self.threshold = Collection(None, self.model).threshold(threshold)
        self.lookalikes = lookalikes
        self.seen = seen if seen is not None else SeenSamples.empty(self.model.embedding_dim)
        self.shard = shard

    def add(self, keys: Sequence[str], images: Sequence[Image]) -> list[SampleDecision]:
        """The decision for each image of this batch, in order; the batch's kept samples are carried on.
        `InvalidArgumentError` for keys that repeat (in the batch or among those kept before)."""
        if len(keys) != len(images):
            raise InvalidArgumentError(f"{len(keys)} keys for {len(images)} images")
        keys = [str(key) for key in keys]
        taken = set(self.seen.keys)
        repeated = next((key for number, key in enumerate(keys) if key in taken or key in keys[:number]), None)
        if repeated is not None:
            raise InvalidArgumentError(f"key {repeated!r} is given twice: each sample needs a key of its own")
        encoded = [_encoded(image) for image in images]
        results = embed_sources(self.embedder, encoded)
        samples = [EmbeddedSample(key, self.shard, result.content_hash, result.width, result.height, result.vector,
                                  result.error) for key, result in zip(keys, results)]
        looks: dict[int, PixelSignature | None] = {}

        def signature_of(number: int) -> PixelSignature | None:
            if number not in looks:
                looks[number] = signature_of_bytes(encoded[number])
            return looks[number]

        decisions = decide_samples(samples, self.threshold, signature_of, self.seen, self.lookalikes).rows
        self.seen = self.seen.with_kept(samples, decisions, signature_of)
        return decisions


def _encoded(image: Image) -> bytes:
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise InvalidArgumentError(f"an image array must be uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
                                       f"not {image.dtype} {image.shape}")
        from PIL import Image as Pillow

        buffer = io.BytesIO()
        Pillow.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image).save(
            buffer, format="PNG", compress_level=1)
        return buffer.getvalue()
    raise ArgumentTypeError(f"an image is encoded bytes or a uint8 array, not {type(image).__name__}")
