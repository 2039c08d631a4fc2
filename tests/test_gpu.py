"""Checks that need a CUDA GPU: autocast embeddings against the CPU's, pinned batches, training steps, faiss on
the GPU. Skipped where torch sees no GPU (CI and the CPU machines); `benchmarks/gpu_check.sh` runs them on a GPU
machine."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval.models.embedding import Embedder, pins_memory
from retrieval.models.model import load_default_model, load_model
from retrieval.sources import head_start
from retrieval.sources import workers as loading
from retrieval.sources.decode import Source
from retrieval.sources.images import decode_image
from retrieval.sources.scan import scan
from retrieval.sources.workers import decoding_loader
from conftest import TINY, invoke, make_characters

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo"


def _no_gpu_reason() -> str:
    if torch.version.cuda is None:
        return f"no CUDA GPU: torch {torch.__version__} is a CPU-only build (torch.cuda.is_available() is false)"
    return "no CUDA GPU: torch.cuda.is_available() is false (torch sees no GPU)"


pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason=_no_gpu_reason())
DEVICE = "cuda"
CPU = torch.device("cpu")


def demo_pixels() -> tuple[list[str], torch.Tensor]:
    """The demo photos and queries, decoded for the default model."""
    prep = load_default_model().preprocessing
    files = sorted([*(DEMO / "photos").iterdir(), *(DEMO / "queries").iterdir()])
    return [f.name for f in files], torch.from_numpy(np.stack([decode_image(f, prep).pixels for f in files]))


def test_cuda_autocast_embeddings_match_the_cpus() -> None:
    names, pixels = demo_pixels()
    on_cpu = Embedder(load_default_model(), CPU).embed(pixels)
    embedder = Embedder(load_default_model(), torch.device(DEVICE))
    dtypes = []
    first_conv = next(m for m in embedder.model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda _module, _inputs, output: dtypes.append(output.dtype))
    on_gpu = embedder.embed(pixels)
    assert dtypes == [torch.float16], "the forward pass runs under autocast on CUDA"
    assert on_gpu.dtype == np.float32 and on_gpu.shape == on_cpu.shape
    cosine = (on_cpu * on_gpu).sum(1) / (np.linalg.norm(on_cpu, axis=1) * np.linalg.norm(on_gpu, axis=1))
    assert cosine.min() > 0.999, dict(zip(names, cosine.round(5)))
    assert np.abs(on_cpu - on_gpu).max() < 0.02
    assert np.allclose(np.linalg.norm(on_gpu, axis=1), 1.0, atol=1e-3)

    def nearest(vectors: np.ndarray) -> list[int]:
        distances = ((vectors[:, None] - vectors[None]) ** 2).sum(-1)
        np.fill_diagonal(distances, np.inf)
        return distances.argmin(1).tolist()

    assert nearest(on_gpu) == nearest(on_cpu)
    assert names[nearest(on_gpu)[names.index("motorcycle_right.png")]] == "motorcycle_left.png"


def test_index_and_query_run_on_the_gpu(tmp_path: Path) -> None:
    indexed = invoke("index", str(DEMO / "photos"), "--index", "idx", "--device", DEVICE, cwd=tmp_path)
    assert indexed.exit_code == 0, indexed.output
    queried = invoke("query", str(DEMO / "queries" / "motorcycle_right.png"), "-k", "3", "--json", "--index", "idx",
                     "--device", DEVICE, cwd=tmp_path)
    assert queried.exit_code == 0, queried.output
    [result] = json.loads(queried.stdout[queried.stdout.index("["):])
    assert Path(result["neighbours"][0]["path"]).name == "motorcycle_left.png"


def test_batches_are_pinned_for_cuda(tmp_path: Path, make_photos, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    model = load_default_model()
    assert pins_memory(torch.device(DEVICE)) and not pins_memory(CPU)
    assert Embedder(model, torch.device(DEVICE)).pin_memory
    make_photos(tmp_path / "p", 48)
    sources = [Source(i, path=f.path) for i, f in enumerate(scan([tmp_path / "p"]).files)]
    loader = decoding_loader(sources, model.preprocessing, batch_size=8, workers=2, max_pixels=10_000_000,
                             pin_memory=True)
    batches = list(loader)
    assert sum(len(b.results) for b in batches) == 48
    assert all(b.pixels.is_pinned() for b in batches)

    # the whole pipeline: every batch the DataLoader delivers reaches the model pinned; only the head start's
    # (decoded before torch was imported, at most MAX_FILES files, here 4) are not
    monkeypatch.setattr(head_start, "MAX_FILES", 4)
    made, seen = [], []
    real_loader, real_embed = loading.decoding_loader, Embedder.embed

    def recording_loader(*args, **kwargs):  # type: ignore[no-untyped-def]
        made.append(kwargs["pin_memory"])
        return real_loader(*args, **kwargs)

    def recording_embed(self: Embedder, pixels: torch.Tensor) -> np.ndarray:
        seen.append((len(pixels), pixels.is_pinned(), self.device.type))
        return real_embed(self, pixels)

    monkeypatch.setattr(loading, "decoding_loader", recording_loader)
    monkeypatch.setattr(Embedder, "embed", recording_embed)
    result = invoke("index", "p", "--index", "idx", "--device", DEVICE, "--batch-size", "8", "--workers", "2",
                    cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert made == [True]
    assert sum(n for n, _, _ in seen) == 48 and {device for _, _, device in seen} == {DEVICE}
    unpinned = [n for n, pinned, _ in seen if not pinned]
    assert sum(unpinned) <= 4 and all(not pinned for _, pinned, _ in seen[:len(unpinned)]), seen


def _history(checkpoint: Path) -> list[dict[str, float]]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return state["history"]


@pytest.mark.parametrize("options", [
    ["--epochs", "4"],
    ["--epochs", "1", "--self-supervised"],
    ["--epochs", "1", "--backbone", "efficientnet-lite0", "--views", "2"],
], ids=["small-cnn", "self-supervised-kornia-views", "frozen-efficientnet"])
def test_training_steps_run_on_the_gpu(tmp_path: Path, options: list[str]) -> None:
    make_characters(tmp_path / "data")
    result = invoke("train", "data", "--out", "m.safetensors", "--device", DEVICE, *options, *TINY, cwd=tmp_path)
    assert result.exit_code == 0, result.output
    history = _history(tmp_path / "m.safetensors.checkpoint")
    losses = [record["loss"] for record in history]
    assert losses and all(math.isfinite(loss) for loss in losses), losses
    if len(losses) > 1:
        assert min(losses[1:]) < losses[0], f"the loss never went below the first epoch's: {losses}"
    trained = load_model(tmp_path / "m.safetensors")
    prep = trained.preprocessing
    pixels = torch.randint(0, 256, (4, *prep.size, prep.channels), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    vectors = Embedder(trained, torch.device(DEVICE)).embed(pixels)
    assert np.isfinite(vectors).all() and vectors.shape == (4, trained.embedding_dim)


def test_faiss_on_the_gpu_gives_the_cpus_neighbours() -> None:
    import faiss

    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if gpus == 0:
        pytest.skip(f"faiss {getattr(faiss, '__version__', '?')} has no GPU here (a faiss-cpu build)")
    rng = np.random.default_rng(0)
    base = rng.standard_normal((20_000, 128), dtype=np.float32)
    queries = rng.standard_normal((200, 128), dtype=np.float32)
    cpu = faiss.IndexFlatL2(128)
    cpu.add(base)
    gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, cpu)
    cpu_distances, cpu_ids = cpu.search(queries, 10)
    gpu_distances, gpu_ids = gpu.search(queries, 10)
    assert (cpu_ids[:, 0] == gpu_ids[:, 0]).all()
    assert (cpu_ids == gpu_ids).mean() > 0.99
    assert np.allclose(cpu_distances, gpu_distances, rtol=1e-3, atol=1e-2)


def test_an_inverted_file_trained_on_the_gpu_searches_as_one_trained_on_the_cpu(monkeypatch: pytest.MonkeyPatch
                                                                                ) -> None:
    """k-means on the GPUs (a faiss-gpu build); the index kept is the CPU one, its recall as the CPU path's."""
    from retrieval.store import vector_index
    from retrieval.store.vector_index import VectorIndex, gpus
    from retrieval.vectors.vector_tuning import tune

    if gpus() == 0:
        pytest.skip("faiss has no GPU here (a faiss-cpu build)")
    rng = np.random.default_rng(0)
    data = rng.standard_normal((50_000, 64)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    ids = np.arange(len(data), dtype=np.int64)
    on_gpu = tune(VectorIndex.build(64, ids, data, "IVF256,Flat"), ids, data, 0.95)
    monkeypatch.setattr(vector_index, "gpus", lambda: 0)
    on_cpu = tune(VectorIndex.build(64, ids, data, "IVF256,Flat"), ids, data, 0.95)
    assert on_gpu.recall_at_10 >= 0.95 and abs(on_gpu.recall_at_10 - on_cpu.recall_at_10) < 0.03


def test_searches_run_on_the_gpus_and_find_what_the_cpu_finds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flat and IVF searches on a GPU copy of the index (the saved index stays the CPU one)."""
    from retrieval.store import vector_index
    from retrieval.store.vector_index import VectorIndex, gpus

    if gpus() == 0:
        pytest.skip("faiss has no GPU here (a faiss-cpu build)")
    rng = np.random.default_rng(1)
    data = rng.standard_normal((30_000, 64)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    ids = np.arange(len(data), dtype=np.int64) * 3
    for kind in ("Flat", "IVF128,Flat"):
        index = VectorIndex.build(64, ids, data, kind)
        index.set_nprobe(16 if kind != "Flat" else None)
        _, on_gpu = index.search(data[:200], 10)
        assert index._searcher() is not index._index  # noqa: SLF001
        monkeypatch.setattr(vector_index, "gpus", lambda: 0)
        index.set_nprobe(index.nprobe)
        _, on_cpu = index.search(data[:200], 10)
        monkeypatch.undo()
        assert (on_gpu[:, 0] == on_cpu[:, 0]).mean() > 0.99
