"""`simsearch train` and the training library under it: model files, best epoch, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from retrieval.models.model import load_model
from retrieval.models.training import Trainer, TrainerConfig, build_objective
from retrieval.models.training.encoder import EncoderTraining, train_encoder
from retrieval.models.training.trainer import CheckpointError
from conftest import TINY, assert_one_line_error, invoke, make_characters, synthetic

def test_train_writes_a_model_that_eval_and_index_can_use(tmp_path: Path) -> None:
    make_characters(tmp_path / "data")
    result = invoke("train", "data", "--out", "chars.safetensors", "--epochs", "2", *TINY, cwd=tmp_path)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    model = load_model(tmp_path / "chars.safetensors")
    assert summary["content_hash"] == model.content_hash
    assert model.spec.backbone == "small-cnn" and model.embedding_dim == 16
    assert model.preprocessing.mode == "L" and model.preprocessing.size == (42, 42)
    assert summary["training_classes"] + summary["validation_classes"] == 8 and summary["validation_classes"] >= 2
    assert summary["validation_recall_at_1"] is not None
    assert (tmp_path / "chars.safetensors.checkpoint").exists()
    scored = invoke("eval", "chars.safetensors", "data", "--way", "4", "--episodes", "20", "--pairs", "50",
                    "--workers", "0", "--json", cwd=tmp_path)
    assert scored.exit_code == 0, scored.output
    too_few = invoke("eval", "chars.safetensors", "data", "--shot", "5", "--workers", "0", cwd=tmp_path)
    assert too_few.exit_code == 2 and "Traceback" not in too_few.output
    assert too_few.output.splitlines()[-1].startswith("error: no class pool has 8 classes with 6 images")


def test_self_supervised_training_takes_any_folder(tmp_path: Path) -> None:
    make_characters(tmp_path / "flat", classes=4, per_class=2, flat=True)
    result = invoke("train", "flat", "--self-supervised", "--out", "ss.safetensors", "--epochs", "1", *TINY,
                    cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert load_model(tmp_path / "ss.safetensors").embedding_dim == 16


def test_frozen_efficientnet_trains_only_the_head_and_pairwise_loss_keeps_its_head(tmp_path: Path) -> None:
    make_characters(tmp_path / "data", classes=6, per_class=3)
    result = invoke("train", "data", "--backbone", "efficientnet-lite0", "--loss", "pairwise", "--views", "1",
                    "--out", "eff.safetensors", "--epochs", "1", *TINY, cwd=tmp_path)
    assert result.exit_code == 0, result.output
    model = load_model(tmp_path / "eff.safetensors")
    assert model.spec.head == "linear" and model.spec.backbone_weights == "imagenet"
    assert (tmp_path / "eff.safetensors").stat().st_size < 100_000
    embedding = torch.nn.functional.normalize(torch.randn(1, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    probability = model.pair_probability(embedding, embedding)
    assert probability is not None and probability.shape == (1,)


def test_an_interrupted_run_resumes_to_the_same_model(tmp_path: Path) -> None:
    pixels, labels = synthetic()
    config = EncoderTraining(embedding_dim=16, classes_per_batch=4, images_per_class=3, epochs=2, steps_per_epoch=5,
                             loss="contrastive")
    uninterrupted = train_encoder(config, pixels, labels)

    class Interrupted(Exception):
        pass

    def stop_in_second_epoch(step: int, loss: float, active: float) -> None:
        if step == 7:
            raise Interrupted

    checkpoint = tmp_path / "run.checkpoint"
    with pytest.raises(Interrupted):
        train_encoder(config, pixels, labels, checkpoint=checkpoint, on_step=stop_in_second_epoch)
    resumed = train_encoder(config, pixels, labels, checkpoint=checkpoint, resume=True)
    assert resumed.result.history[0].epoch == 1 and resumed.result.steps == 10
    assert resumed.model.content_hash == uninterrupted.model.content_hash
    with pytest.raises(CheckpointError, match="other data or other training settings"):
        train_encoder(EncoderTraining(embedding_dim=16, classes_per_batch=4, images_per_class=3, epochs=2,
                                      steps_per_epoch=5, margin=0.5), pixels, labels, checkpoint=checkpoint,
                      resume=True)


def test_trainer_keeps_the_epoch_with_the_best_validation_score() -> None:
    pixels, labels = synthetic()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(42 * 42, 8))
    scores = iter([0.2, 0.9, 0.4])
    snapshots = []

    def validate(module: torch.nn.Module) -> float:
        snapshots.append({k: v.clone() for k, v in module.state_dict().items()})
        return next(scores)

    config = TrainerConfig(classes_per_batch=4, images_per_class=3, max_steps=9, steps_per_epoch=3, warmup_steps=1)
    result = Trainer(model, build_objective("triplet", 8), pixels, labels, lambda x: x.float() / 255, config,
                     validate=validate).fit()
    assert result.best_epoch == 2 and result.best_score == 0.9
    assert all(torch.equal(model.state_dict()[k], snapshots[1][k]) for k in snapshots[1])
    assert not torch.equal(model.state_dict()["1.weight"], snapshots[2]["1.weight"])


def test_training_bad_input_is_a_one_line_error(tmp_path: Path) -> None:
    assert_one_line_error(invoke("train", "nowhere", "--out", "m.safetensors", cwd=tmp_path), "not a folder")
    make_characters(tmp_path / "one", classes=1)
    assert_one_line_error(invoke("train", "one", "--out", "m.safetensors", *TINY, cwd=tmp_path),
                          "at least two class subfolders")
    make_characters(tmp_path / "data", classes=3)
    assert_one_line_error(invoke("train", "data", "--out", "m.safetensors", "--loss", "hinge", cwd=tmp_path),
                          "--loss must be one of")
    assert_one_line_error(invoke("train", "data", "--out", "m.safetensors", "--margin", "-1", cwd=tmp_path),
                          "--margin must be positive")
    assert invoke("train", "data", "--out", "m.safetensors", "--input-size", "8", cwd=tmp_path).exit_code == 2
    (tmp_path / "a-file").write_text("")
    assert_one_line_error(invoke("train", "data", "--out", "a-file/m.safetensors", *TINY, cwd=tmp_path),
                          "not a folder: a-file (to write a-file/m.safetensors)")
    assert_one_line_error(invoke("train", "data", "--out", "m.safetensors", "--resume", cwd=tmp_path),
                          "no checkpoint to resume from")
    assert not (tmp_path / "m.safetensors").exists()
