"""Model files that lie: whatever a file's metadata or tensors say, loading it is a one-line `ModelError`, and
nothing is allocated from what the file claims before the file is known to hold it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import REPO, assert_one_line_error, invoke, save_tiny_model, tiny_spec
from retrieval.errors import ModelError
from retrieval.models.embedding import Embedder
from retrieval.models.model import build_model, load_model, load_pretrained_backbone_model
from retrieval.models.model_spec import read_model_header

Spec = dict[str, Any]
Parts = tuple[dict[str, torch.Tensor], Spec, str]
"""A model file's tensors, spec and content hash."""
MakePhotos = Callable[..., list[Path]]
FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def contents(path: Path) -> Parts:
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    return tensors, json.loads(metadata["spec"]), metadata["content_hash"]


def write(path: Path, tensors: dict[str, torch.Tensor], spec: object, content_hash: str) -> Path:
    """A safetensors file with these tensors and this spec (any JSON; a string is written as it is)."""
    text = spec if isinstance(spec, str) else json.dumps(spec)
    save_file(tensors, str(path), metadata={"spec": text, "content_hash": content_hash})
    return path


@pytest.fixture
def tiny_parts(tiny_model_file: Path) -> Parts:
    return contents(tiny_model_file)


def assert_refused(load: Callable[[Path], object], path: Path, text: str) -> None:
    with pytest.raises(ModelError) as caught:
        load(path)
    message = str(caught.value)
    assert text in message and str(path) in message and "\n" not in message, message


def edited(change: Callable[[Spec], object]) -> Callable[[Spec], Spec]:
    def edit(spec: Spec) -> Spec:
        change(spec)
        return spec

    return edit


SPEC_LIES = {
    "negative embedding_dim": (edited(lambda s: s.update(embedding_dim=-5)), "embedding_dim must be an integer"),
    "embedding_dim as text": (edited(lambda s: s.update(embedding_dim="16")), "embedding_dim must be an integer"),
    "embedding_dim true": (edited(lambda s: s.update(embedding_dim=True)), "embedding_dim must be an integer"),
    "huge embedding_dim": (edited(lambda s: s.update(embedding_dim=10**12)), "embedding_dim must be an integer"),
    "spec null": (lambda s: None, "the spec must be a JSON object"),
    "spec a list": (lambda s: [s], "the spec must be a JSON object"),
    "spec not JSON": (lambda s: "{not json", "the spec is not JSON"),
    "another format": (edited(lambda s: s.update(format=2)), "unsupported model format 2"),
    "a missing field": (edited(lambda s: s.pop("head")), "the spec lacks head"),
    "an unknown field": (edited(lambda s: s.update(layers=3)), "unknown fields 'layers'"),
    "unknown backbone": (edited(lambda s: s.update(backbone="resnet-9000")), "backbone must be one of"),
    "unknown head": (edited(lambda s: s.update(head="mlp")), "head must be one of"),
    "unknown weights": (edited(lambda s: s.update(backbone_weights="internet")), "backbone_weights must be one of"),
    "imagenet weights for the small cnn": (edited(lambda s: s.update(backbone_weights="imagenet")),
                                           "needs the efficientnet-lite0 backbone"),
    "preprocessing a string": (edited(lambda s: s.update(preprocessing="RGB")),
                               "preprocessing must be a JSON object"),
    "input size 0x0": (edited(lambda s: s["preprocessing"].update(size=[0, 0])), "preprocessing size"),
    "input size of one number": (edited(lambda s: s["preprocessing"].update(size=[32])), "preprocessing size"),
    "huge input size": (edited(lambda s: s["preprocessing"].update(size=[100000, 100000])), "preprocessing size"),
    "non-square small-cnn input": (edited(lambda s: s["preprocessing"].update(size=[32, 16])), "square inputs"),
    "too small for its poolings": (edited(lambda s: s["preprocessing"].update(size=[3, 3])), "too small for 2"),
    "mode CMYK": (edited(lambda s: s["preprocessing"].update(mode="CMYK")), "preprocessing mode must be RGB or L"),
    "std 0": (edited(lambda s: s["preprocessing"].update(std=0)), "preprocessing std"),
    "std NaN": (edited(lambda s: s["preprocessing"].update(std=math.nan)), "preprocessing std"),
    "mean infinite": (edited(lambda s: s["preprocessing"].update(mean=math.inf)), "preprocessing mean"),
    "mean as text": (edited(lambda s: s["preprocessing"].update(mean="127")), "preprocessing mean"),
    "unknown resample": (edited(lambda s: s["preprocessing"].update(resample="sinc")), "preprocessing resample"),
    "resample a list": (edited(lambda s: s["preprocessing"].update(resample=["box"])), "preprocessing resample"),
    "channels 1e9": (edited(lambda s: s["backbone_options"].update(channels=[1_000_000_000])),
                     "backbone_options.channels"),
    "no channels": (edited(lambda s: s["backbone_options"].update(channels=[])), "backbone_options.channels"),
    "out_dim 0": (edited(lambda s: s["backbone_options"].update(out_dim=0)), "backbone_options.out_dim"),
    "an unknown option": (edited(lambda s: s["backbone_options"].update(depth=50)), "unknown fields 'depth'"),
    "efficientnet in grey": (edited(lambda s: s.update(backbone="efficientnet-lite0", backbone_options={},
                                                       preprocessing={**s["preprocessing"], "mode": "L"})),
                             "takes RGB input"),
    "pair_head as text": (edited(lambda s: s.update(pair_head="yes")), "pair_head must be true or false"),
}


@pytest.mark.parametrize("lie", list(SPEC_LIES))
def test_a_spec_that_lies_is_a_model_error_naming_the_file_and_the_field(lie: str, tiny_parts: Parts,
                                                                         tmp_path: Path) -> None:
    tensors, spec, content_hash = tiny_parts
    change, text = SPEC_LIES[lie]
    path = write(tmp_path / "lying.safetensors", tensors, change(spec), content_hash)
    assert_refused(load_model, path, text)
    assert_refused(read_model_header, path, text)


@pytest.mark.parametrize("content_hash", ["abc", "G" * 64, "0" * 63])
def test_a_content_hash_that_is_no_sha256_is_a_model_error(content_hash: str, tiny_parts: Parts,
                                                            tmp_path: Path) -> None:
    tensors, spec, _ = tiny_parts
    path = write(tmp_path / "lying.safetensors", tensors, spec, content_hash)
    assert_refused(load_model, path, "content_hash must be 64 hexadecimal digits")
    assert_refused(read_model_header, path, "content_hash must be 64 hexadecimal digits")


def test_a_content_hash_of_other_tensors_is_a_model_error(tiny_parts: Parts, tmp_path: Path) -> None:
    """The header can only be checked against the tensors by loading them."""
    tensors, spec, _ = tiny_parts
    path = write(tmp_path / "lying.safetensors", tensors, spec, "0" * 64)
    assert_refused(load_model, path, "do not match the content hash")


def scaled(key: str, value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[0] = value

    return change


TENSOR_LIES = {
    "a missing tensor": (lambda t: t.pop("backbone.embed.0.bias"), "lacks 1 tensors its spec needs"),
    "an extra tensor": (lambda t: t.update({"extra\nline": torch.zeros(3)}),
                        "holds 1 tensors its spec has no place for ('extra\\nline')"),
    "a mis-shaped tensor": (lambda t: t.update({"backbone.embed.0.weight": torch.zeros(16, 511)}),
                            "is F32 [16, 511] in the file, its spec needs F32 [16, 512]"),
    "a tensor of another dtype": (lambda t: t.update({"backbone.embed.0.bias": torch.zeros(16, dtype=torch.float64)}),
                                  "is F64 [16] in the file"),
    "a NaN weight": (scaled("backbone.features.0.0.weight", math.nan), "holds NaN or infinite values"),
    "an infinite running variance": (scaled("backbone.features.0.1.running_var", math.inf),
                                     "holds NaN or infinite values"),
    "an edited weight": (scaled("backbone.features.0.0.weight", 0.5), "do not match the content hash"),
}


@pytest.mark.parametrize("lie", list(TENSOR_LIES))
def test_tensors_that_do_not_fit_the_spec_are_a_model_error(lie: str, tiny_parts: Parts, tmp_path: Path) -> None:
    tensors, spec, content_hash = tiny_parts
    change, text = TENSOR_LIES[lie]
    change(tensors)
    assert_refused(load_model, write(tmp_path / "lying.safetensors", tensors, spec, content_hash), text)


def test_a_spec_far_larger_than_its_file_is_refused_before_anything_is_allocated(tiny_parts: Parts,
                                                                                 tmp_path: Path) -> None:
    """Within every bound, but billions of parameters (tens of GB) in a file of a few hundred bytes: refused on
    the shapes, at once."""
    _, spec, content_hash = tiny_parts
    spec["preprocessing"]["size"] = [4096, 4096]
    spec.update(embedding_dim=65536, backbone_options={"channels": [4096] * 12})
    path = write(tmp_path / "huge.safetensors", {"w": torch.zeros(1)}, spec, content_hash)
    assert path.stat().st_size < 1000
    started = time.perf_counter()
    assert_refused(load_model, path, "lacks")
    assert time.perf_counter() - started < 2.0


def test_a_pretrained_backbone_model_takes_its_backbone_from_the_wheel_only(tmp_path: Path) -> None:
    model = load_pretrained_backbone_model()
    model.save(tmp_path / "pretrained.safetensors")
    _, spec, content_hash = contents(tmp_path / "pretrained.safetensors")
    smuggled = {f"backbone.{key}": value for key, value in list(model.backbone.state_dict().items())[:2]}
    assert_refused(load_model, write(tmp_path / "smuggled.safetensors", smuggled, spec, content_hash),
                   "tensors its spec has no place for ('backbone.")
    spec.update(head="linear")
    assert_refused(load_model, write(tmp_path / "headless.safetensors", {}, spec, content_hash),
                   "lacks 2 tensors its spec needs (head.bias, head.weight)")


def test_bad_model_files_through_the_cli_are_one_line_errors(tiny_parts: Parts, tmp_path: Path,
                                                             make_photos: MakePhotos) -> None:
    make_photos(tmp_path / "photos", 2)
    tensors, spec, content_hash = tiny_parts
    (tmp_path / "garbage.safetensors").write_bytes(b"\x07" * 100)
    write(tmp_path / "null.safetensors", tensors, None, content_hash)
    write(tmp_path / "dim.safetensors", tensors, {**spec, "embedding_dim": -5}, content_hash)
    write(tmp_path / "nan.safetensors", {**tensors, "backbone.embed.0.bias": torch.full((16,), math.nan)}, spec,
          content_hash)
    expected = {"garbage.safetensors": "cannot read model file garbage.safetensors",
                "null.safetensors": "null.safetensors: bad model spec: the spec must be a JSON object (got None)",
                "dim.safetensors": "dim.safetensors: bad model spec: embedding_dim must be an integer from 1 to 65536 "
                                   "(got -5)",
                "nan.safetensors": "nan.safetensors: tensor backbone.embed.0.bias holds NaN or infinite values"}
    for name, text in expected.items():
        assert_one_line_error(invoke("index", "photos", "--model", name, "--workers", "0", cwd=tmp_path), text)
    assert not (tmp_path / ".simsearch").exists()


def overflowing_model_file(path: Path) -> Path:
    """Finite weights so large that the embeddings overflow to infinity (and NaN once normalised)."""
    torch.manual_seed(0)
    model = build_model(tiny_spec())
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(1e30)
    model.save(path)
    return path


def test_non_finite_embeddings_are_a_model_error_not_stored_vectors(tmp_path: Path, make_photos: MakePhotos) -> None:
    path = overflowing_model_file(tmp_path / "overflow.safetensors")
    embedder = Embedder(load_model(path), torch.device("cpu"))
    with pytest.raises(ModelError, match="NaN or infinite embeddings"):
        embedder.embed(torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8))
    make_photos(tmp_path / "photos", 2)
    result = invoke("index", "photos", "--model", "overflow.safetensors", "--workers", "0", cwd=tmp_path)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [result.output.strip().splitlines()[-1]] and "NaN or infinite embeddings" in errors[0]
    assert not (tmp_path / ".simsearch").exists(), "the new index, which stored nothing, is removed"


# --- fuzzing ---------------------------------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**70) | st.floats() | st.text(max_size=6),
                    lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(st.text(max_size=6), children, max_size=4),
                    max_leaves=10)
SPEC_PATHS = [("format",), ("name",), ("backbone",), ("backbone_weights",), ("head",), ("embedding_dim",),
              ("pair_head",), ("backbone_options",), ("backbone_options", "channels"),
              ("backbone_options", "channels", 0), ("backbone_options", "out_dim"),
              ("backbone_options", "embedding_bn"), ("preprocessing",), ("preprocessing", "size"),
              ("preprocessing", "size", 0), ("preprocessing", "mode"), ("preprocessing", "mean"),
              ("preprocessing", "std"), ("preprocessing", "resample")]


def replaced(spec: Spec, path: tuple[str | int, ...], value: object, delete: bool) -> Spec:
    """`spec` (a copy) with the field at `path` replaced by `value` or deleted."""
    copy = json.loads(json.dumps(spec))
    holder = copy
    for step in path[:-1]:
        holder = holder.setdefault(step, {}) if isinstance(holder, dict) else holder[step]
    if delete and isinstance(holder, dict):
        holder.pop(path[-1], None)
    elif isinstance(holder, dict) or (isinstance(holder, list) and len(holder) > path[-1]):  # type: ignore[operator]
        holder[path[-1]] = value  # type: ignore[index]
    return copy


def outcome(load: Callable[[Path], object], path: Path) -> None:
    """Loading either works or is a one-line ModelError; anything else propagates and fails the test."""
    try:
        load(path)
    except ModelError as exc:
        assert str(exc) and "\n" not in str(exc)


@FUZZ
@given(field=st.sampled_from(SPEC_PATHS), value=JSON, delete=st.booleans(), whole=st.none() | JSON,
       content_hash=st.sampled_from(["keep", "", "x" * 64]) | st.text(max_size=70))
def test_fuzzed_metadata_gives_only_model_errors(
        field: tuple[str | int, ...], value: object, delete: bool, whole: object, content_hash: str,
        tiny_parts: Parts, tmp_path: Path) -> None:
    tensors, spec, saved_hash = tiny_parts
    lie = replaced(spec, field, value, delete) if whole is None else whole
    path = write(tmp_path / "fuzzed.safetensors", tensors, lie, saved_hash if content_hash == "keep" else content_hash)
    outcome(load_model, path)
    outcome(read_model_header, path)


@pytest.fixture(scope="module")
def small_model_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return save_tiny_model(tmp_path_factory.mktemp("fuzz") / "small.safetensors", seed=0, side=8).read_bytes()


@FUZZ
@given(data=st.data())
def test_fuzzed_model_file_bytes_give_only_model_errors(data: st.DataObject, small_model_bytes: bytes,
                                                        tmp_path: Path) -> None:
    """A valid small model file, truncated and with bytes overwritten (most often in its header: its length, its
    JSON)."""
    content = bytearray(small_model_bytes[:data.draw(st.integers(0, len(small_model_bytes)), label="length")])
    header_end = 8 + int.from_bytes(small_model_bytes[:8], "little")
    for _ in range(data.draw(st.integers(0, 6), label="changes")):
        if not content:
            break
        where = data.draw(st.integers(0, min(header_end, len(content)) - 1) | st.integers(0, len(content) - 1))
        content[where] = data.draw(st.integers(0, 255))
    path = tmp_path / "fuzzed.safetensors"
    path.write_bytes(bytes(content))
    outcome(load_model, path)
    outcome(read_model_header, path)


MEMORY_PROBE = """
import json, resource, sys, time
from pathlib import Path
from retrieval.errors import ModelError
from retrieval.models.model import load_model

load_model(Path(sys.argv[1]))  # imports and first-use allocations, before the baseline
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
slowest, refused = 0.0, 0
for name in sys.argv[2:]:
    started = time.perf_counter()
    try:
        load_model(Path(name))
    except ModelError:
        refused += 1
    slowest = max(slowest, time.perf_counter() - started)
growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline
print(json.dumps({"growth_kb": growth, "slowest": slowest, "refused": refused}))
"""


def test_lying_files_allocate_nothing_near_what_they_claim(tiny_model_file: Path, tiny_parts: Parts,
                                                           tmp_path: Path) -> None:
    """In a fresh process, the peak resident size hardly moves while files of a few hundred bytes that claim
    gigabytes are refused: a small CNN of a billion channels, one of 12 x 4096 channels on 4096 x 4096 inputs
    (8 GB), and the pretrained backbone with a 65536-d head (a 335 MB matrix)."""
    _, spec, content_hash = tiny_parts
    claims = [
        {**spec, "backbone_options": {"channels": [1_000_000_000]}},
        {**spec, "embedding_dim": 65536, "backbone_options": {"channels": [4096] * 12},
         "preprocessing": {**spec["preprocessing"], "size": [4096, 4096]}},
        {**spec, "backbone": "efficientnet-lite0", "backbone_weights": "imagenet", "head": "linear",
         "embedding_dim": 65536, "backbone_options": {}},
    ]
    files = [write(tmp_path / f"claim{i}.safetensors", {"w": torch.zeros(2)}, claim, content_hash)
             for i, claim in enumerate(claims)]
    assert all(file.stat().st_size < 1000 for file in files)
    probe = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tiny_model_file), *map(str, files)],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    report = json.loads(probe.stdout.splitlines()[-1])
    assert report["refused"] == len(files)
    assert report["growth_kb"] < 64 * 1024, report
    assert report["slowest"] < 2.0, report
