"""What a model file says about its model without loading it: the spec, and the content hash it was saved with.

Nothing here imports torch, so that the indexer can start decoding files for a model while torch is still
being imported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.errors import ModelError
from retrieval.images import Preprocessing

FORMAT_VERSION = 1
PRETRAINED_WEIGHTS = "imagenet"
FILE_WEIGHTS = "file"
DEFAULT_MODEL_FILE = Path(__file__).resolve().parent / "weights" / "photo-default.safetensors"
"""The model `simsearch index` uses for a new index (`retrieval.model.load_default_model`)."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything but the tensors needed to rebuild a model."""

    name: str
    backbone: str
    embedding_dim: int
    preprocessing: Preprocessing
    head: str = "identity"
    backbone_weights: str = FILE_WEIGHTS
    backbone_options: dict[str, object] = field(default_factory=dict)
    pair_head: bool = False
    """Whether the model carries a pairwise head `sigmoid(w.|h1-h2| + b)` that scores pairs of embeddings."""

    def to_json(self) -> str:
        data: dict[str, object] = {
            "format": FORMAT_VERSION, "name": self.name, "backbone": self.backbone,
            "backbone_weights": self.backbone_weights, "backbone_options": self.backbone_options,
            "head": self.head, "embedding_dim": self.embedding_dim,
            "preprocessing": self.preprocessing.to_dict(),
        }
        if self.pair_head:
            data["pair_head"] = True
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT_VERSION:
                raise ModelError(f"unsupported model format {data.get('format')!r}")
            return cls(name=data["name"], backbone=data["backbone"], embedding_dim=int(data["embedding_dim"]),
                       preprocessing=Preprocessing.from_dict(data["preprocessing"]), head=data["head"],
                       backbone_weights=data["backbone_weights"],
                       backbone_options=dict(data.get("backbone_options", {})),
                       pair_head=bool(data.get("pair_head", False)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"malformed model spec: {exc}") from exc


@dataclass(frozen=True)
class ModelHeader:
    """The metadata of a model file written by `EmbeddingModel.save`."""

    spec: ModelSpec
    content_hash: str


def read_model_header(path: Path) -> ModelHeader:
    """The spec and content hash a model file was saved with, read without its tensors (or torch)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"cannot read model file {path}: {exc}") from exc
    spec = spec_from_metadata(metadata, path)
    if "content_hash" not in metadata:
        raise ModelError(f"{path} is not a simsearch model (no content hash in its metadata)")
    return ModelHeader(spec, metadata["content_hash"])


def spec_from_metadata(metadata: dict[str, str], path: Path) -> ModelSpec:
    """The spec in the metadata of the safetensors file at `path`; `ModelError` if it is not a simsearch model."""
    if "spec" not in metadata:
        raise ModelError(f"{path} is not a simsearch model (no spec in its metadata)")
    return ModelSpec.from_json(metadata["spec"])
