"""Episodes, confidence intervals, Lake's runs, the Omniglot readers and a tiny end-to-end training run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from retrieval.datasets.locate import DATASETS_ENV, datasets_root
from retrieval.datasets.omniglot import DatasetNotFoundError, LakeRun, load_characters, load_lake_runs
from retrieval.evaluation.episodes import episode_accuracy, sample_episodes
from retrieval.evaluation.lake import lake_oneshot_accuracy
from retrieval.evaluation.stats import mean_ci
from retrieval.evaluation.episodes import EpisodeSamplingError
from retrieval.models.training import Trainer, TrainerConfig, build_objective


def _require_omniglot() -> None:
    path = datasets_root() / "omniglot"
    if not (path / "all_runs.zip").is_file() or not (path / "images_background.zip").is_file():
        pytest.skip(f"../shared/datasets not found: no Omniglot zips under {path} (set {DATASETS_ENV})")


def test_mean_ci_known_values() -> None:
    estimate = mean_ci(torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert estimate.mean == pytest.approx(0.5)
    assert estimate.ci95 == pytest.approx(1.959964 * (1 / 3) ** 0.5 / 2, rel=1e-5)
    assert estimate.n == 4


def test_episodes_are_seeded_and_shaped() -> None:
    labels = torch.arange(30).repeat_interleave(4)
    first = sample_episodes(labels, n_way=5, k_shot=1, n_query=2, episodes=3, seed=7)
    second = sample_episodes(labels, n_way=5, k_shot=1, n_query=2, episodes=3, seed=7)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a.support, b.support) and torch.equal(a.query, b.query)
    episode = first[0]
    assert episode.support.numel() == 5 and episode.query.numel() == 10
    assert set(labels[episode.support].tolist()) == set(labels[episode.query].tolist())
    assert not set(episode.support.tolist()) & set(episode.query.tolist())
    assert torch.equal(labels[episode.support][episode.query_labels], labels[episode.query])


def test_episodes_respect_groups() -> None:
    labels = torch.arange(12).repeat_interleave(3)
    groups = torch.tensor([0] * 5 + [1] * 4 + [2] * 3)
    for episode in sample_episodes(labels, n_way=4, k_shot=1, n_query=1, episodes=20, seed=0, groups=groups):
        assert groups[labels[episode.support]].unique().numel() == 1
        assert groups[labels[episode.support]][0].item() in (0, 1)
    with pytest.raises(EpisodeSamplingError):
        sample_episodes(labels, n_way=6, k_shot=1, n_query=1, episodes=1, groups=groups)


def test_episode_accuracy_perfect_and_chance_embeddings() -> None:
    labels = torch.arange(10).repeat_interleave(5)
    episodes = sample_episodes(labels, n_way=5, k_shot=2, n_query=3, episodes=50, seed=0)
    assert episode_accuracy(F.one_hot(labels, 10).float(), episodes).mean == 1.0
    constant = episode_accuracy(torch.ones(50, 4), episodes)
    assert constant.mean == pytest.approx(1 / 5)


def test_lake_accuracy_on_a_synthetic_run() -> None:
    support = torch.arange(4, dtype=torch.uint8).view(4, 1, 1).expand(4, 2, 2) * 60
    run = LakeRun(support=support, queries=support.flip(0), answers=torch.tensor([3, 2, 1, 0]))
    assert lake_oneshot_accuracy(lambda x: x.flatten(1).float(), [run]).mean == 1.0
    wrong = LakeRun(support=support, queries=support, answers=torch.tensor([1, 0, 3, 2]))
    assert lake_oneshot_accuracy(lambda x: x.flatten(1).float(), [wrong]).mean == 0.0


def test_missing_datasets_raise_a_typed_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DATASETS_ENV, str(tmp_path))
    assert datasets_root() == tmp_path
    with pytest.raises(DatasetNotFoundError):
        load_lake_runs(28)


def test_lake_runs_and_pixel_baseline() -> None:
    _require_omniglot()
    runs = load_lake_runs(105)
    assert len(runs) == 20
    for run in runs:
        assert run.support.shape == run.queries.shape == (20, 105, 105)
        assert run.support.dtype == torch.uint8
        assert sorted(run.answers.tolist()) == list(range(20))

    def inverted_pixels(images: torch.Tensor) -> torch.Tensor:
        return F.normalize(255.0 - images.flatten(1).float(), dim=1)

    estimate = lake_oneshot_accuracy(inverted_pixels, runs)
    assert estimate.n == 400
    # Lake et al. 2015 report 21.7 % for 1-nearest-neighbour on pixels.
    assert estimate.mean == pytest.approx(0.217, abs=0.01)


def test_background_set_layout() -> None:
    _require_omniglot()
    background = load_characters("background", 28)
    assert background.images.shape == (19280, 28, 28) and background.images.dtype == torch.uint8
    assert background.num_classes == 964 and len(background.alphabets) == 30
    assert torch.equal(torch.bincount(background.labels), torch.full((964,), 20))
    assert load_characters("background", 28) is background
    held = background.select_alphabets(["Latin", "Greek"])
    assert held.num_classes == 26 + 24 and held.alphabets == ("Latin", "Greek")
    assert held.characters[held.labels[0]].startswith(held.alphabets[held.alphabet_of_class[held.labels[0]]])


def test_trainer_improves_one_shot_accuracy_on_synthetic_classes() -> None:
    """Classes are noisy copies of random 6x6 patterns; a few triplet steps must beat the untrained net."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    prototypes = torch.randint(0, 256, (40, 6, 6), generator=gen)
    labels = torch.arange(40).repeat_interleave(6)
    images = (prototypes[labels] + torch.randint(-60, 61, (240, 6, 6), generator=gen)).clamp(0, 255).to(torch.uint8)
    train_mask = labels < 30

    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 32), nn.ReLU(), nn.Linear(32, 8))

    def preprocess(x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255.0

    held_images, held_labels = images[~train_mask], labels[~train_mask]
    episodes = sample_episodes(held_labels, n_way=5, k_shot=1, n_query=2, episodes=40, seed=0)

    def validate(trained: nn.Module) -> float:
        return episode_accuracy(F.normalize(trained(preprocess(held_images)), dim=1), episodes).mean

    model.eval()
    with torch.no_grad():
        before = validate(model)
    config = TrainerConfig(
        classes_per_batch=8, images_per_class=3, lr=1e-2, warmup_steps=5, max_steps=150, steps_per_epoch=50, seed=0
    )
    objective = build_objective("triplet", 8, mining="semihard")
    result = Trainer(
        model, objective, images[train_mask], labels[train_mask], preprocess, config, validate=validate
    ).fit()
    assert result.steps == 150 and len(result.history) == 3
    assert result.best_score == max(r.val_score for r in result.history)
    with torch.no_grad():
        assert validate(model) == pytest.approx(result.best_score)
    assert result.best_score > before + 0.1
