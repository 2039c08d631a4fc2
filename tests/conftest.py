"""Shared fixtures: a tiny seeded model (fast to run) and synthetic photo folders."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.images import Preprocessing
from retrieval.model import EmbeddingModel, build_model, load_model
from retrieval.model_spec import ModelSpec

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SIMSEARCH_DATASETS", REPO.parent / "shared" / "datasets"))


def tiny_spec(name: str = "tiny", side: int = 32) -> ModelSpec:
    return ModelSpec(name=name, backbone="small-cnn", embedding_dim=16,
                     preprocessing=Preprocessing(size=(side, side), mode="RGB", mean=127.5, std=64.0),
                     backbone_options={"channels": [8, 8]})


def save_tiny_model(path: Path, seed: int, side: int = 32) -> Path:
    torch.manual_seed(seed)
    build_model(tiny_spec(f"tiny-{seed}", side)).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny.safetensors", seed=0)


@pytest.fixture
def tiny(tiny_model_file: Path) -> EmbeddingModel:
    return load_model(tiny_model_file)


def photo(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A distinct, smooth colour image: a blurred random field, so that small edits keep it close."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, size=(6, 8, 3)).astype(np.uint8)
    return Image.fromarray(low).resize(size, Image.Resampling.BICUBIC)


@pytest.fixture
def make_photos() -> Callable[..., list[Path]]:
    def make(folder: Path, count: int, start: int = 0, suffix: str = ".png",
             size: tuple[int, int] = (64, 48)) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i in range(start, start + count):
            path = folder / f"img{i:04d}{suffix}"
            photo(i, size).save(path)
            paths.append(path)
        return paths

    return make


def require_shared(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared/datasets not found ({path} is missing): the test needs the shared datasets")
    return path
