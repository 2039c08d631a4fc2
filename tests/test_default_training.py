"""Training the default photo model's last stage: the user edits, the cached activations, the tail's triplet training,
the model file that carries the trained stage, and the untrained poolings it is compared with."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.errors import ModelError
from retrieval.models.model import build_model, load_model, pretrained_backbone_spec
from retrieval.models.model_spec import ModelSpec
from retrieval.models.training.photo_edits import FAMILIES, user_edit
from retrieval.models.training.tail import TailTraining, embed_all, train_tail
from retrieval.models.training.view_cache import rendered_views, stage_activations


def _photo(seed: int = 0, size: tuple[int, int] = (320, 240)) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[1], 0:size[0]]
    pixels = np.stack([(x * 255 / size[0]), (y * 255 / size[1]), rng.uniform(0, 255, size[::-1])], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def _gem_model(trained_from_stage: int | None = 6):  # type: ignore[no-untyped-def]
    options: dict[str, object] = {"pooling": "gem"}
    if trained_from_stage is not None:
        options["trained_from_stage"] = trained_from_stage
    spec = dataclasses.replace(pretrained_backbone_spec(), name="tail-test", head="linear", backbone_options=options)
    return build_model(spec)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_edit_family_gives_an_rgb_photo_and_is_reproducible(family: str) -> None:
    photo = _photo()
    first = FAMILIES[family](photo, random.Random(3))
    again = FAMILIES[family](photo, random.Random(3))
    assert first.mode == "RGB" and min(first.size) >= 8
    assert np.array_equal(np.asarray(first), np.asarray(again)), "the same seed, the same edit"


def test_user_edits_change_the_photo_and_differ_from_each_other() -> None:
    photo = _photo()
    rng = random.Random(0)
    edits = [np.asarray(user_edit(photo, rng).resize((64, 64))) for _ in range(4)]
    plain = np.asarray(photo.resize((64, 64)))
    assert all(not np.array_equal(edit, plain) for edit in edits)
    assert not np.array_equal(edits[0], edits[1])


def test_rendered_views_do_not_depend_on_the_number_of_workers(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"p{i}.jpg")
        _photo(i).save(paths[-1])
    one, two = rendered_views(paths, 2, (64, 64), workers=1), rendered_views(paths, 2, (64, 64), workers=2)
    assert one.shape == (3, 3, 64, 64, 3) and np.array_equal(one, two)
    assert np.array_equal(one[:, 0], np.stack([np.asarray(Image.open(p).resize((64, 64), Image.Resampling.BILINEAR))
                                               for p in paths])), "view 0 is the photo as it is"


def test_the_model_through_cached_activations_embeds_as_the_model_does() -> None:
    model = _gem_model()
    pixels = np.stack([np.asarray(_photo(i).resize((224, 224))) for i in range(3)])
    activations = stage_activations(model, pixels, 6)
    through_cache = embed_all(model, activations, 6)
    with torch.inference_mode():
        direct = model(torch.from_numpy(pixels))
    assert torch.allclose(through_cache, direct, atol=2e-2), "float16 activations change the vectors by rounding only"
    assert float((through_cache * direct).sum(dim=1).min()) > 0.999


def _hardest_gap(model, activations: torch.Tensor) -> float:  # type: ignore[no-untyped-def]
    """Mean over views of (farthest same-photo distance - nearest other-photo distance): below 0 is separated."""
    vectors = embed_all(model, activations.flatten(0, 1), 6)
    labels = torch.arange(activations.shape[0]).repeat_interleave(activations.shape[1])
    distances = torch.cdist(vectors, vectors).pow(2)
    same = labels[:, None] == labels[None, :]
    return float((distances.masked_fill(~same, 0).amax(1) - distances.masked_fill(same, 9).amin(1)).mean())


def test_tail_training_moves_only_the_tail_and_separates_the_photos() -> None:
    model = _gem_model()
    generator = torch.Generator().manual_seed(0)
    base = torch.rand(8, 1, 192, 7, 7, generator=generator) * 3
    activations = (base + 1.5 * torch.rand(8, 4, 192, 7, 7, generator=generator)).half()
    frozen_before = model.backbone.stages[5][0].layers[0].weight.clone()
    tail_before = model.backbone.stages[6][0].layers[0].weight.clone()
    gap_before = _hardest_gap(model, activations)
    config = TailTraining(steps=40, photos_per_batch=8, views_per_photo=2, learning_rate=3e-4, margin=0.5)
    losses = train_tail(model, activations, ["a", "a", "a", "a", "", "", "", ""], config)
    assert len(losses) == 40 and _hardest_gap(model, activations) < gap_before - 0.05
    assert torch.equal(model.backbone.stages[5][0].layers[0].weight, frozen_before)
    assert not torch.equal(model.backbone.stages[6][0].layers[0].weight, tail_before)
    assert not any(p.requires_grad for p in model.parameters())


def test_a_model_with_a_trained_stage_carries_that_stage_and_reads_back_the_same(tmp_path: Path) -> None:
    model = _gem_model()
    with torch.no_grad():
        model.backbone.stages[6][0].layers[0].weight.mul_(1.5)
    model.invalidate_hash()
    model.save(tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.content_hash == model.content_hash
    assert torch.equal(loaded.backbone.stages[6][0].layers[0].weight, model.backbone.stages[6][0].layers[0].weight)
    head_only = _gem_model(None)
    head_only.save(tmp_path / "head.safetensors")
    extra = (tmp_path / "m.safetensors").stat().st_size - (tmp_path / "head.safetensors").stat().st_size
    assert 2_000_000 < extra < 6_000_000, "stage 6 and the head convolution, not the whole backbone"


@pytest.mark.parametrize("options", [{"trained_from_stage": 9}, {"trained_from_stage": "6"},
                                     {"scales": []}, {"scales": [1.0, 2.0]}, {"scales": [float("nan")]},
                                     {"pooling": "regional"}])
def test_backbone_options_that_lie_are_model_errors(options: dict[str, object]) -> None:
    with pytest.raises(ModelError):
        dataclasses.replace(pretrained_backbone_spec(), backbone_options=options)


def test_trained_stages_need_the_pretrained_backbone() -> None:
    spec = pretrained_backbone_spec()
    with pytest.raises(ModelError, match="trained_from_stage needs"):
        ModelSpec(name="x", backbone="efficientnet-lite0", embedding_dim=1280, preprocessing=spec.preprocessing,
                  backbone_options={"trained_from_stage": 6})


def test_multi_scale_and_regional_pooling_give_unit_vectors_of_the_usual_size() -> None:
    for options, side in (({"pooling": "gem", "scales": [1.0, 224 / 288]}, 288), ({"pooling": "regional-gem"}, 224)):
        base = pretrained_backbone_spec()
        spec = dataclasses.replace(base, backbone_options=options,
                                   preprocessing=dataclasses.replace(base.preprocessing, size=(side, side)))
        model = build_model(spec)
        pixels = torch.from_numpy(np.asarray(_photo().resize((side, side))))[None]
        with torch.inference_mode():
            vector = model(pixels)
        assert vector.shape == (1, 1280) and abs(float(vector.norm()) - 1.0) < 1e-4


def test_an_index_made_with_v3_keeps_it_until_reembed(tmp_path: Path, make_photos) -> None:  # type: ignore[no-untyped-def]
    from conftest import invoke

    from retrieval.models.model import load_default_model, load_v3_model

    make_photos(tmp_path / "p", 3)
    v3, default = load_v3_model(), load_default_model()
    assert v3.content_hash != default.content_hash and v3.calibration is not None

    def served() -> str:
        shown = invoke("info", "--json", cwd=tmp_path)
        assert shown.exit_code == 0, shown.output
        return shown.output

    assert invoke("index", "p", "--model", "default-v3", cwd=tmp_path).exit_code == 0
    make_photos(tmp_path / "p", 1, start=3)
    assert invoke("index", "p", cwd=tmp_path).exit_code == 0, "no --model: the index's own model"
    assert v3.content_hash in served() and default.content_hash not in served()
    refused = invoke("index", "p", "--model", "default", cwd=tmp_path)
    assert refused.exit_code != 0 and "--reembed" in refused.output
    assert invoke("index", "p", "--model", "default", "--reembed", cwd=tmp_path).exit_code == 0
    assert default.content_hash in served()
