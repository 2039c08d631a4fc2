"""`train` and `calibrate` when things go wrong: a full disk, a binary file for a CSV, a plot that cannot be a
PNG, a folder for the model, a damaged checkpoint. Each is a one-line error, exit 2, and no file left behind."""

from __future__ import annotations

import errno
import io
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.atomic import temporary_path
from retrieval.models.training import Trainer, TrainerConfig, build_objective
from retrieval.models.training.trainer import CheckpointError
from conftest import assert_one_line_error, invoke, make_characters, synthetic

TRAIN = ["--epochs", "1", "--steps-per-epoch", "1", "--embedding-dim", "16", "-P", "2", "-K", "2", "--input-size", "16",
         "--validation-fraction", "0", "--workers", "0"]
"""One step of one epoch: the shortest run that writes a checkpoint and a model."""


def assert_ends_in_one_line_error(result, text: str) -> None:  # type: ignore[no-untyped-def]
    """Exit 2, no traceback, and one error line, the last, saying `text` (progress may come before it)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == [lines[-1]] and text in errors[0], result.output


def left_in(folder: Path, *keep: str) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir() if entry.name not in keep)


@pytest.fixture
def disk_fills_writing(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """`fill(name)`: from now on, writing the file `name` (through its temporary beside it) fills the disk half way
    through: half the bytes land, then ENOSPC."""
    real_write_bytes = Path.write_bytes

    def fill(name: str) -> None:
        def write_bytes(self: Path, data: bytes) -> int:
            if self.name == temporary_path(Path(name)).name:
                content = bytes(memoryview(data))
                real_write_bytes(self, content[: len(content) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
            return real_write_bytes(self, data)

        monkeypatch.setattr(Path, "write_bytes", write_bytes)

    return fill


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 16 kB tmpfs (root only): smaller than any model, checkpoint or plot written here."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# --- train ------------------------------------------------------------------------------------------------------

def test_a_full_disk_while_writing_the_model_leaves_no_model(tmp_path: Path,
                                                             disk_fills_writing: Callable[[str], None]) -> None:
    make_characters(tmp_path / "data")
    disk_fills_writing("m.safetensors")
    result = invoke("train", "data", "--out", "m.safetensors", *TRAIN, cwd=tmp_path)
    assert_ends_in_one_line_error(result, "cannot write the model m.safetensors: No space left on device")
    assert left_in(tmp_path, "data") == ["m.safetensors.checkpoint"], "the last epoch's checkpoint, nothing else"


def test_a_full_disk_while_writing_the_checkpoint_stops_the_run_and_leaves_nothing(
        tmp_path: Path, disk_fills_writing: Callable[[str], None]) -> None:
    make_characters(tmp_path / "data")
    disk_fills_writing("m.safetensors.checkpoint")
    result = invoke("train", "data", "--out", "m.safetensors", *TRAIN, cwd=tmp_path)
    assert_ends_in_one_line_error(result, "cannot write the checkpoint m.safetensors.checkpoint: No space left")
    assert left_in(tmp_path, "data") == []


def test_a_really_full_disk_while_training(tmp_path: Path, small_disk: Path) -> None:
    make_characters(tmp_path / "data")
    model = small_disk / "m.safetensors"
    result = invoke("train", "data", "--out", str(model), "--checkpoint", "run.checkpoint", *TRAIN, cwd=tmp_path)
    assert_ends_in_one_line_error(result, f"cannot write the model {model}: No space left on device")
    assert left_in(small_disk) == []
    result = invoke("train", "data", "--out", "m.safetensors", "--checkpoint", str(small_disk / "run.checkpoint"),
                    *TRAIN, cwd=tmp_path)
    assert_ends_in_one_line_error(result, "cannot write the checkpoint")
    assert left_in(small_disk) == [] and not (tmp_path / "m.safetensors").exists()


def test_an_existing_folder_as_the_model_is_refused_before_training(tmp_path: Path) -> None:
    make_characters(tmp_path / "data")
    (tmp_path / "models").mkdir()
    assert_one_line_error(invoke("train", "data", "--out", "models", *TRAIN, cwd=tmp_path),
                          "--out models is a folder: name the model file to write, e.g. models/model.safetensors")
    assert_one_line_error(invoke("train", "data", "--out", "m.safetensors", "--checkpoint", "models", *TRAIN,
                                 cwd=tmp_path), "--checkpoint models is a folder")
    assert left_in(tmp_path, "data") == ["models"] and left_in(tmp_path / "models") == []


def test_resuming_from_a_damaged_checkpoint_is_a_one_line_error(tmp_path: Path) -> None:
    make_characters(tmp_path / "data")
    (tmp_path / "m.safetensors.checkpoint").write_bytes(b"\x80\x02garbage, not a checkpoint" * 10)
    result = invoke("train", "data", "--out", "m.safetensors", "--resume", *TRAIN, cwd=tmp_path)
    assert_ends_in_one_line_error(result, "cannot read checkpoint m.safetensors.checkpoint: not a training "
                                          "checkpoint, or a damaged one")
    assert not (tmp_path / "m.safetensors").exists()


def small_trainer() -> Trainer:
    pixels, labels = synthetic(classes=6, per_class=4)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(42 * 42, 8))
    config = TrainerConfig(classes_per_batch=3, images_per_class=2, max_steps=2, steps_per_epoch=1, warmup_steps=1)
    return Trainer(model, build_objective("triplet", 8), pixels, labels, lambda x: x.float() / 255, config)


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("checkpoint") / "run.checkpoint"
    small_trainer().fit(path)
    return path.read_bytes()


def saved(value: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def damaged_states() -> dict[str, Callable[[bytes], bytes]]:
    def edited_state(change: Callable[[dict[str, object]], None]) -> Callable[[bytes], bytes]:
        def damage(good: bytes) -> bytes:
            state = torch.load(io.BytesIO(good), weights_only=True)
            change(state)
            return saved(state)

        return damage

    return {
        "garbage": lambda good: b"\x80\x02garbage" * 20,
        "empty": lambda good: b"",
        "text": lambda good: b"step,epoch\n1,2\n",
        "truncated": lambda good: good[: len(good) // 2],
        "a tensor, not a state": lambda good: saved(torch.zeros(3)),
        "no weights": edited_state(lambda state: state.pop("model")),
        "a step that is no number": edited_state(lambda state: state.update(step="many")),
        "history of another shape": edited_state(lambda state: state.update(history=[{"epoch": 1}])),
        "weights of another model": edited_state(lambda state: state.update(model={"0.weight": torch.zeros(2)})),
    }


@pytest.mark.parametrize("damage", list(damaged_states()))
def test_a_damaged_checkpoint_is_a_checkpoint_error(damage: str, checkpoint_bytes: bytes, tmp_path: Path) -> None:
    path = tmp_path / "run.checkpoint"
    path.write_bytes(damaged_states()[damage](checkpoint_bytes))
    with pytest.raises(CheckpointError) as caught:
        small_trainer().resume(path)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 400, str(caught.value)


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_fuzzed_checkpoint_bytes_give_only_checkpoint_errors(data: st.DataObject, checkpoint_bytes: bytes,
                                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    content = bytearray(checkpoint_bytes[:data.draw(st.integers(0, len(checkpoint_bytes)), label="length")])
    for _ in range(data.draw(st.integers(0, 4), label="changes") if content else 0):
        content[data.draw(st.integers(0, len(content) - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path_factory.getbasetemp() / "fuzzed.checkpoint"
    path.write_bytes(bytes(content))
    try:
        small_trainer().resume(path)
    except CheckpointError as exc:
        assert "\n" not in str(exc)


# --- calibrate --------------------------------------------------------------------------------------------------

def test_a_full_disk_while_writing_the_plot_leaves_no_plot(labelled: Path, tiny_model_file: Path,
                                                           disk_fills_writing: Callable[[str], None]) -> None:
    (labelled / "plots").mkdir()
    disk_fills_writing("cal.png")
    result = invoke("calibrate", "data", "--model", str(tiny_model_file), "--plot", "plots/cal.png",
                    "--bootstrap", "10", "--workers", "0", cwd=labelled)
    assert_ends_in_one_line_error(result, "cannot write the plot plots/cal.png: No space left on device")
    assert left_in(labelled / "plots") == []


def test_a_really_full_disk_while_writing_the_plot(labelled: Path, tiny_model_file: Path,
                                                   small_disk: Path) -> None:
    plot = small_disk / "cal.png"
    result = invoke("calibrate", "data", "--model", str(tiny_model_file), "--plot", str(plot), "--bootstrap", "10",
                    "--workers", "0", cwd=labelled)
    assert_ends_in_one_line_error(result, f"cannot write the plot {plot}: No space left on device")
    assert left_in(small_disk) == []


def test_a_binary_file_for_the_pairs_csv_is_refused(labelled: Path, tiny_model_file: Path) -> None:
    (labelled / "photo.csv").write_bytes((labelled / "data" / "red" / "0.png").read_bytes())
    result = invoke("calibrate", "photo.csv", "--model", str(tiny_model_file), cwd=labelled)
    assert_one_line_error(result, "photo.csv: not a CSV of pairs (path_a,path_b,same): it is not UTF-8 text")
    (labelled / "nul.csv").write_bytes(b"path_a,path_b,same\nx\x00.png,y.png,1\n")
    assert_one_line_error(invoke("calibrate", "nul.csv", "--model", str(tiny_model_file), cwd=labelled),
                          "nul.csv:2: no such file: x")
    assert not (labelled / ".simsearch").exists()


def test_a_plot_that_is_not_a_png_is_refused_before_anything_is_embedded(labelled: Path) -> None:
    """Refused before the model is even loaded (the model named does not exist, and that is not what is said)."""
    for plot in ("x.txt", "x.pdf", "x"):
        result = invoke("calibrate", "data", "--model", "no-such-model.safetensors", "--plot", plot, cwd=labelled)
        assert_one_line_error(result, f"cannot write the plot {plot}: plots are PNG files, name it *.png")
    (labelled / "x.png").mkdir()
    assert_one_line_error(invoke("calibrate", "data", "--plot", "x.png", cwd=labelled),
                          "cannot write the plot x.png: it is a folder")
    assert not (labelled / ".simsearch").exists()
