"""The small CNN backbone, its documented preprocessing, and batched affine augmentation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from retrieval.models.encoders.small_cnn import INPUT_SIZE, PIXEL_MEAN, PIXEL_STD, PREPROCESSING, RESAMPLE, SmallCNN
from retrieval.models.training.views import stroke_views
from retrieval.sources.images import decode_image


def _preprocess(image: Image.Image) -> torch.Tensor:
    """The pipeline stated in the module docstring, written out with PIL and torch only."""
    grey = image.convert("L").resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling[RESAMPLE])
    pixels = torch.from_numpy(np.asarray(grey, dtype=np.float32))
    return ((pixels - PIXEL_MEAN) / PIXEL_STD).unsqueeze(0)


def _character() -> Image.Image:
    image = Image.new("1", (105, 105), color=1)
    ImageDraw.Draw(image).line([(20, 20), (85, 85)], fill=0, width=8)
    return image


def test_decoding_with_the_model_preprocessing_matches_the_documented_pipeline() -> None:
    """A model file's preprocessing (what `simsearch` decodes with) gives what the benchmarks trained on."""
    buffer = io.BytesIO()
    _character().save(buffer, format="PNG")
    decoded = torch.tensor(decode_image(buffer.getvalue(), PREPROCESSING).pixels).float()
    assert decoded.shape == (INPUT_SIZE, INPUT_SIZE, 1)
    assert torch.equal((decoded[..., 0] - PIXEL_MEAN) / PIXEL_STD, _preprocess(_character())[0])


def test_preprocessing_makes_strokes_bright_on_zero_background() -> None:
    x = _preprocess(_character())
    assert x.shape == (1, INPUT_SIZE, INPUT_SIZE)
    assert x[0, 0, -1].item() == pytest.approx(0.0)
    centre = INPUT_SIZE // 2
    assert x[0, centre, centre].item() == pytest.approx(1.0, abs=0.05)


def test_forward_shape_unnormalised_and_deterministic() -> None:
    torch.manual_seed(0)
    model = SmallCNN(in_channels=1, embedding_dim=16, channels=(8, 8, 8, 8)).eval()
    batch = torch.stack([_preprocess(_character()), torch.zeros(1, INPUT_SIZE, INPUT_SIZE)])
    with torch.no_grad():
        out = model(batch)
        again = model(batch)
    assert out.shape == (2, 16)
    assert torch.equal(out, again)
    assert not torch.allclose(out.norm(dim=1), torch.ones(2))


def test_width_depth_and_input_size_are_parameters() -> None:
    model = SmallCNN(in_channels=3, embedding_dim=8, channels=(4, 6, 8), input_size=40)
    assert model(torch.randn(2, 3, 40, 40)).shape == (2, 8)
    with pytest.raises(ValueError):
        model(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError):
        SmallCNN(channels=(4,) * 6, input_size=28)


def test_gradients_reach_the_first_layer() -> None:
    model = SmallCNN(embedding_dim=8, channels=(4, 4))
    model(torch.randn(4, 1, INPUT_SIZE, INPUT_SIZE)).pow(2).sum().backward()
    first_conv = model.features[0][0]
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0


def test_stroke_views_distort_each_image_reproducibly_and_nothing_when_ranges_are_zero() -> None:
    images = torch.rand(3, 1, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(0))
    identity = stroke_views(degrees=0.0, shear=0.0, scale=(1.0, 1.0), translate=0.0)
    assert torch.allclose(identity(images), images, atol=1e-5)
    views = stroke_views()
    torch.manual_seed(5)
    first = views(images)
    torch.manual_seed(5)
    assert torch.equal(first, views(images))
    assert first.shape == images.shape
    assert not torch.allclose(first, images, atol=1e-3)
    same = views(images[:1].expand(3, -1, -1, -1).contiguous())
    assert not torch.allclose(same[0], same[1], atol=1e-3), "a fresh distortion for every image"
