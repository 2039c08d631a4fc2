"""The pieces of the default photo model: GeM pooling, the PCA-whitening head, and training from it."""

from __future__ import annotations

from pathlib import Path

import torch

from retrieval.models.encoders.efficientnet_lite import EfficientNetLite0
from retrieval.models.model import load_model
from retrieval.models.training.whitening import pca_whitening
from conftest import TINY, invoke, make_characters


def test_gem_pooling_lies_between_the_mean_and_the_max() -> None:
    features = torch.rand(2, 1280, 7, 7, generator=torch.Generator().manual_seed(0)) * 6
    mean, gem = EfficientNetLite0(), EfficientNetLite0(pooling="gem", gem_p=3.0)
    for net in (mean, gem):
        net.feature_map = lambda x: features  # type: ignore[method-assign]
    pooled_mean, pooled_gem = mean(torch.empty(0)), gem(torch.empty(0))
    assert torch.allclose(pooled_mean, features.mean(dim=(2, 3)))
    assert bool((pooled_gem > pooled_mean).all() and (pooled_gem < features.amax(dim=(2, 3))).all())


def test_whitening_decorrelates_and_evens_out_the_leading_directions() -> None:
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(8, 8, generator=generator) * torch.tensor([10.0, 5, 3, 2, 1, 0.5, 0.2, 0.1])
    data = torch.randn(4000, 8, generator=generator) @ mixing.T + 3.0
    weight, bias = pca_whitening(data, dim=4, shrinkage=0.0)
    whitened = data @ weight.T + bias
    assert whitened.shape == (4000, 4)
    assert torch.allclose(whitened.mean(dim=0), torch.zeros(4), atol=1e-3)
    assert torch.allclose(torch.cov(whitened.T), torch.eye(4), atol=1e-2)
    shrunk_weight, _ = pca_whitening(data, dim=4, shrinkage=1.0)
    assert bool((shrunk_weight.norm(dim=1) < weight.norm(dim=1)).all()), "shrinkage damps every direction"


def test_train_starts_a_gem_head_from_the_whitening(tmp_path: Path) -> None:
    make_characters(tmp_path / "data", classes=6, per_class=3)
    result = invoke("train", "data", "--backbone", "efficientnet-lite0", "--pooling", "gem", "--head-init",
                    "whitening", "--views", "2", "--out", "gem.safetensors", "--epochs", "1", *TINY, cwd=tmp_path)
    assert result.exit_code == 0, result.output
    model = load_model(tmp_path / "gem.safetensors")
    assert model.spec.backbone_options == {"pooling": "gem"} and model.backbone.pooling == "gem"
    refused = invoke("train", "data", "--head-init", "whitening", "--out", "x.safetensors", *TINY, cwd=tmp_path)
    assert refused.exit_code == 2 and "needs the frozen efficientnet-lite0 backbone" in refused.output
