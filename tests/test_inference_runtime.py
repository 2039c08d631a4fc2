"""ONNX Runtime behind `Embedder` (the `[onnx]` extra): the same vectors and neighbours as torch, torch where the
extra is missing or asked for, and a cached export that is damaged or of another model never used."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run, save_tiny_model
from retrieval.errors import ModelError
from retrieval.index import create_index
from retrieval.models.embedding import RUNTIME_ENV, Embedder
from retrieval.models.model import EmbeddingModel, load_default_model, load_model
from retrieval.models.runtime_onnx import CACHE_ENV, HASH_KEY, onnx_installed
from retrieval.sources.images import decode_image
from retrieval.vectors.search import query_files

pytestmark = pytest.mark.skipif(not onnx_installed(), reason="the [onnx] extra (onnxruntime, onnx, onnxscript, "
                                                               "platformdirs) is not installed")

CPU = torch.device("cpu")
DEMO = Path(__file__).resolve().parents[1] / "demo" / "photos"
TOLERANCE = 1e-3
"""The largest 1 - cosine allowed between ONNX Runtime's vector and torch's for one image."""


@pytest.fixture(scope="module")
def export_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for the module: the default model is exported once (about 15 s on two cores)."""
    return tmp_path_factory.mktemp("export-cache")


@pytest.fixture(autouse=True)
def cached_here(export_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(CACHE_ENV, str(export_cache))
    monkeypatch.delenv(RUNTIME_ENV, raising=False)
    yield


def one_minus_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return 1.0 - np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def demo_pixels(model: EmbeddingModel) -> torch.Tensor:
    return torch.from_numpy(np.stack([decode_image(p, model.preprocessing).pixels for p in sorted(DEMO.iterdir())]))


def test_default_model_gives_torchs_vectors_on_real_photos() -> None:
    model = load_default_model()
    fast, reference = Embedder(model, CPU), Embedder(model, CPU, runtime="torch")
    assert (fast.runtime, reference.runtime) == ("onnxruntime", "torch")
    pixels = demo_pixels(model)
    assert one_minus_cosine(fast.embed(pixels), reference.embed(pixels)).max() <= TOLERANCE
    assert one_minus_cosine(fast.embed(pixels[:1]), reference.embed(pixels[:1])).max() <= TOLERANCE  # batch of one


def test_an_index_made_with_onnx_runtime_has_torchs_neighbours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_default_model()
    photos = sorted(DEMO.iterdir())
    neighbours = {}
    for runtime in ("torch", "onnxruntime"):
        monkeypatch.setenv(RUNTIME_ENV, runtime if runtime == "torch" else "auto")
        assert Embedder(model, CPU).runtime == runtime
        index = create_index(tmp_path / runtime)
        assert run(index, [DEMO], model).embedded == len(photos)
        results = query_files(index, Embedder(model, CPU, runtime="torch"), photos, 4)
        neighbours[runtime] = [[(n.path, n.distance) for n in result.neighbours] for result in results]
    for with_torch, with_onnx in zip(neighbours["torch"], neighbours["onnxruntime"]):
        assert [path for path, _ in with_onnx] == [path for path, _ in with_torch]
        np.testing.assert_allclose([d for _, d in with_onnx], [d for _, d in with_torch], atol=2e-3)


def test_without_onnxruntime_torch_runs(tiny: EmbeddingModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    embedder = Embedder(tiny, CPU)
    assert embedder.runtime == "torch"
    assert embedder.embed(demo_pixels(tiny)).shape == (len(list(DEMO.iterdir())), tiny.embedding_dim)
    with pytest.raises(ModelError, match="ONNX Runtime"):
        Embedder(tiny, CPU, runtime="onnxruntime")


def test_the_environment_variable_forces_torch(tiny: EmbeddingModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RUNTIME_ENV, "torch")
    assert Embedder(tiny, CPU).runtime == "torch"
    assert Embedder(tiny, CPU, runtime="onnxruntime").runtime == "onnxruntime"  # an explicit argument wins


@pytest.mark.parametrize("damage", ["garbage", "truncated", "another model's export", "relabelled export"])
def test_a_damaged_or_lying_cached_export_is_rebuilt(tiny: EmbeddingModel, tmp_path: Path, export_cache: Path,
                                                      damage: str) -> None:
    import onnx

    cached = export_cache / "onnx" / f"{tiny.content_hash}.onnx"
    Embedder(tiny, CPU)
    good = cached.read_bytes()
    other = load_model(save_tiny_model(tmp_path / "other.safetensors", seed=1))
    Embedder(other, CPU)
    other_export = (export_cache / "onnx" / f"{other.content_hash}.onnx").read_bytes()
    if damage == "garbage":
        cached.write_bytes(b"\x00not an onnx model" * 100)
    elif damage == "truncated":
        cached.write_bytes(good[:len(good) // 2])
    elif damage == "another model's export":
        cached.write_bytes(other_export)
    else:  # another model's weights, labelled with this model's hash
        proto = onnx.load_model_from_string(other_export)
        onnx.helper.set_model_props(proto, {HASH_KEY: tiny.content_hash})
        cached.write_bytes(proto.SerializeToString())

    embedder = Embedder(tiny, CPU)
    assert embedder.runtime == "onnxruntime"
    pixels = demo_pixels(tiny)
    assert one_minus_cosine(embedder.embed(pixels), Embedder(tiny, CPU, runtime="torch").embed(pixels)).max() <= TOLERANCE
    assert cached.read_bytes() == good  # rebuilt: the export of a model is the same bytes each time


def test_an_unwritable_cache_still_runs_onnx_runtime(tiny: EmbeddingModel, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV, str(blocked))
    assert Embedder(tiny, CPU).runtime == "onnxruntime"


def test_other_devices_run_torch(tiny: EmbeddingModel) -> None:
    with pytest.raises(ModelError, match="needs a CPU"):
        Embedder(tiny, torch.device("meta"), runtime="onnxruntime")
