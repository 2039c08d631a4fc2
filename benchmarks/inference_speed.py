"""The default model's CPU inference by runtime, and the whole `simsearch index` with torch and with the runtime
`Embedder` adopts, measured side by side in one run.

(a) The model stage: `load_default_model()` on pixels already decoded (the validation photos of
    benchmarks/photo_split.py, at the indexer's batch size, 32), per runtime and thread count (1 and 2), the
    runtimes taking turns round after round (the machine is shared: the median of the rounds is reported), and
    1 - cosine between each runtime's vectors and torch's on all the validation photos (max and mean):
      torch eager          batch norms folded, NCHW
      torch channels-last  what `Embedder(runtime="torch")` runs
      torch.compile        the channels-last module compiled (inductor)
      onnxruntime fp32     what `Embedder` runs with the [onnx] extra (retrieval/models/runtime_onnx.py)
      onnxruntime int8     static QDQ quantisation (per channel), calibrated on TRAIN photos only
      openvino fp32/int8   the same two ONNX models compiled by OpenVINO (f32 precision, no bf16), where installed
(b) `simsearch index` of the 800 ImageNet photos (../shared/datasets/photos/imagenet-sample) on a fresh index,
    wall time from process start to exit, with SIMSEARCH_RUNTIME=torch and with the default (auto), alternating
    (torch, auto, torch, auto, ...); the median ratio. The ONNX export is made (and cached) before, and its
    one-off time reported; the decoding alone (the indexer's loader, default workers, no model) beside it.
(c) With --quality, instead: recall@1 and TPR at FPR 1e-3 on the validation near-duplicate set
    (benchmarks/neardup_photos.py: 81 photos, 810 edited copies) with torch and with ONNX Runtime.

    python benchmarks/inference_speed.py                 # (a) and (b)
    python benchmarks/inference_speed.py --quality       # (c)

Results are appended to benchmarks/results/inference_speed.jsonl.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from index_throughput import git_commit  # noqa: E402
from photo_split import split_photos  # noqa: E402
from retrieval.models.embedding import RUNTIME_ENV, Embedder, fold_batch_norms  # noqa: E402
from retrieval.models.model import EmbeddingModel, load_default_model  # noqa: E402
from retrieval.models.runtime_onnx import export_onnx, onnx_installed  # noqa: E402
from retrieval.sources.decode import Source  # noqa: E402
from retrieval.sources.images import decode_image  # noqa: E402
from retrieval.sources.workers import decoding_loader, default_workers  # noqa: E402
from results_file import append_result  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "inference_speed.jsonl"
PHOTOS = split_photos().train[0].parent
BATCH = 32
CALIBRATION_PHOTOS = 96
Run = Callable[[torch.Tensor], np.ndarray]


def decoded(paths: list[Path], model: EmbeddingModel) -> torch.Tensor:
    return torch.from_numpy(np.stack([decode_image(p, model.preprocessing).pixels for p in paths]))


def in_batches(run: Run, pixels: torch.Tensor) -> np.ndarray:
    return np.concatenate([run(pixels[i:i + BATCH]) for i in range(0, len(pixels), BATCH)])


def torch_runs(model: EmbeddingModel, compile_too: bool) -> dict[str, Run]:
    eager = fold_batch_norms(copy.deepcopy(model)).eval()
    channels_last = Embedder(model, torch.device("cpu"), runtime="torch")

    def module_run(module: torch.nn.Module) -> Run:
        def run(pixels: torch.Tensor) -> np.ndarray:
            with torch.inference_mode():
                return module(pixels).float().numpy()
        return run

    runs = {"torch eager": module_run(eager), "torch channels-last": channels_last.embed}
    if compile_too:
        runs["torch.compile"] = module_run(torch.compile(channels_last.model, dynamic=False))
    return runs


def quantised(fp32: Path, calibration: torch.Tensor, folder: Path) -> Path:
    """Static int8 QDQ quantisation of the export (weights per channel), calibrated on `calibration`'s pixels."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"pixels": calibration[i:i + BATCH].numpy()}
                                 for i in range(0, len(calibration), BATCH)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    out = folder / "int8.onnx"
    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def onnx_runs(path: Path, label: str) -> dict[str, Run]:
    import onnxruntime

    sessions: dict[int, onnxruntime.InferenceSession] = {}

    def run(pixels: torch.Tensor) -> np.ndarray:
        threads = torch.get_num_threads()
        if threads not in sessions:
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.log_severity_level = 3
            sessions[threads] = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return sessions[threads].run(None, {"pixels": pixels.numpy()})[0]

    return {f"onnxruntime {label}": run}


def openvino_runs(path: Path, label: str) -> dict[str, Run]:
    try:
        import openvino
    except ImportError:
        return {}
    core = openvino.Core()
    compiled: dict[int, object] = {}

    def run(pixels: torch.Tensor) -> np.ndarray:
        threads = torch.get_num_threads()
        if threads not in compiled:
            compiled[threads] = core.compile_model(str(path), "CPU", {
                "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
        return compiled[threads](pixels.numpy())[0]  # type: ignore[operator]

    return {f"openvino {label}": run}


def distances_to(reference: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """1 - cosine, row by row."""
    return 1.0 - np.sum(reference * vectors, axis=1) / (np.linalg.norm(reference, axis=1) *
                                                         np.linalg.norm(vectors, axis=1))


def model_stage(console: Console, rounds: int, compile_too: bool) -> list[dict[str, object]]:
    model = load_default_model()
    split = split_photos()
    validation = decoded(split.validation, model)
    timing = validation[:2 * BATCH]
    runs = torch_runs(model, compile_too)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        if onnx_installed():
            fp32 = folder / "fp32.onnx"
            fp32.write_bytes(export_onnx(Embedder(model, torch.device("cpu"), runtime="torch").model, model))
            int8 = quantised(fp32, decoded(split.train[:CALIBRATION_PHOTOS], model), folder)
            runs |= onnx_runs(fp32, "fp32") | onnx_runs(int8, "int8") | openvino_runs(fp32, "fp32") | \
                openvino_runs(int8, "int8 (the QDQ model)")
        else:
            console.print("onnxruntime is not installed (pip install '.[onnx]'): torch only")
        torch.set_num_threads(2)
        reference = in_batches(runs["torch channels-last"], validation)
        cosines = {name: distances_to(reference, in_batches(run, validation)) for name, run in runs.items()}
        rates: dict[tuple[str, int], list[float]] = {}
        for _ in range(rounds + 1):  # the first round warms up (sessions, compilation) and is not counted
            for threads in (1, 2):
                torch.set_num_threads(threads)
                for name, run in runs.items():
                    started = time.perf_counter()
                    in_batches(run, timing)
                    rates.setdefault((name, threads), []).append(len(timing) / (time.perf_counter() - started))
    base = {threads: statistics.median(rates[("torch channels-last", threads)][1:]) for threads in (1, 2)}
    rows = []
    for (name, threads), measured in rates.items():
        rate = statistics.median(measured[1:])
        rows.append({"runtime": name, "threads": threads, "images_per_s": rate, "per_core": rate / threads,
                     "vs_torch": rate / base[threads], "max_1_minus_cos": float(cosines[name].max()),
                     "mean_1_minus_cos": float(cosines[name].mean())})
    table = Table(title=f"default model on {len(timing)} decoded validation photos, batch {BATCH}, median of "
                        f"{rounds} rounds; 1 - cosine to torch on all {len(validation)} validation photos")
    for column in ("runtime", "threads", "images/s", "per core", "x torch channels-last", "max 1-cos", "mean 1-cos"):
        table.add_column(column, justify="left" if column == "runtime" else "right")
    for row in sorted(rows, key=lambda r: (r["threads"], list(runs).index(str(r["runtime"])))):
        table.add_row(str(row["runtime"]), str(row["threads"]), f"{row['images_per_s']:.1f}", f"{row['per_core']:.1f}",
                      f"{row['vs_torch']:.2f}", f"{row['max_1_minus_cos']:.1e}", f"{row['mean_1_minus_cos']:.1e}")
    console.print(table)
    return rows


def decode_rate(paths: list[Path], model: EmbeddingModel) -> float:
    sources = [Source(i, path=str(p)) for i, p in enumerate(paths)]
    loader = decoding_loader(sources, model.preprocessing, batch_size=BATCH, workers=default_workers(),
                             max_pixels=100_000_000, pin_memory=False)
    started = time.perf_counter()
    seen = sum(len(batch.results) for batch in loader)
    return seen / (time.perf_counter() - started)


def index_seconds(folder: Path, index: Path, runtime: str) -> float:
    env = dict(os.environ)
    env.pop(RUNTIME_ENV, None)
    if runtime == "torch":
        env[RUNTIME_ENV] = "torch"
    started = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "simsearch"), "index", str(folder), "--index", str(index)],
                   cwd=REPO, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def whole_index(console: Console, pairs: int) -> dict[str, object]:
    model = load_default_model()
    photos = sorted(PHOTOS.glob("*.JPEG"))
    started = time.perf_counter()
    adopted = Embedder(model, torch.device("cpu")).runtime  # exports and caches, as the first index would
    prepare = time.perf_counter() - started
    for path in photos:
        path.read_bytes()  # every run reads from the page cache
    decode = decode_rate(photos, model)
    seconds: dict[str, list[float]] = {"torch": [], adopted: []}
    with tempfile.TemporaryDirectory() as scratch:
        for n in range(pairs):
            for runtime in ("torch", adopted):
                seconds[runtime].append(index_seconds(PHOTOS, Path(scratch) / f"{runtime}-{n}", runtime))
    ratios = [t / f for t, f in zip(seconds["torch"], seconds[adopted])]
    table = Table(title=f"simsearch index of {len(photos)} ImageNet photos, fresh index, wall time; the runs "
                        f"alternate (torch, {adopted}) x {pairs}")
    for column in ("runtime", "seconds (each run)", "median s", "images/s"):
        table.add_column(column, justify="left" if column == "runtime" else "right")
    for runtime, values in seconds.items():
        median = statistics.median(values)
        table.add_row(runtime, " ".join(f"{v:.1f}" for v in values), f"{median:.1f}", f"{len(photos) / median:.1f}")
    console.print(table)
    console.print(f"median ratio torch / {adopted}: {statistics.median(ratios):.2f}x; decoding alone (the indexer's "
                  f"loader, {default_workers()} workers, no model): {decode:.1f} images/s; preparing the embedder "
                  f"(export and cache on first use) took {prepare:.1f} s")
    return {"photos": len(photos), "adopted": adopted, "seconds": seconds, "median_ratio": statistics.median(ratios),
            "decode_images_per_s": decode, "prepare_seconds": prepare}


def quality(console: Console) -> dict[str, object]:
    """recall@1 and TPR at FPR 1e-3 of the validation near-duplicate set, torch against ONNX Runtime."""
    import neardup_photos
    from edit_families import TRAINED_FAMILIES
    from neardup_scores import copy_scores
    from retrieval.sources.embed import embed_batches
    from retrieval.vectors.unit_distance import pairwise_distances

    items = neardup_photos.build(split_photos().train[0].parents[2], neardup_photos.default_folder("validation"),
                                 "validation")
    groups, originals = np.array([i.group for i in items]), np.array([i.is_original for i in items])
    trained = np.isin(np.array([i.family for i in items]), TRAINED_FAMILIES)
    model = load_default_model()
    sources = [Source(n, path=str(i.path)) for n, i in enumerate(items)]
    scores: dict[str, dict[str, float]] = {}
    vectors: dict[str, np.ndarray] = {}
    for runtime in ("torch", "onnxruntime"):
        embedder = Embedder(model, torch.device("cpu"), runtime=runtime)  # type: ignore[arg-type]
        results = [r for batch in embed_batches(embedder, sources, max_pixels=100_000_000) for r in batch]
        vectors[runtime] = np.stack([r.vector for r in results])
        distances = pairwise_distances(vectors[runtime], vectors[runtime])
        a = copy_scores(distances, groups, originals, trained)
        b = copy_scores(distances, groups, originals, ~trained)
        everything = copy_scores(distances, groups, originals, np.ones(len(items), bool))
        scores[runtime] = {"a_recall_at_1": a.recall_at_1, "a_tpr": a.tpr_at_fpr, "b_recall_at_1": b.recall_at_1,
                           "b_tpr": b.tpr_at_fpr, "all_recall_at_1": everything.recall_at_1,
                           "all_tpr": everything.tpr_at_fpr}
    cosine = distances_to(vectors["torch"], vectors["onnxruntime"])
    table = Table(title=f"validation near-duplicates ({originals.sum()} photos, {(~originals).sum()} copies): "
                        "(a) trained edit family, (b) the others")
    table.add_column("figure")
    for column in ("torch", "onnxruntime", "difference"):
        table.add_column(column, justify="right")
    for key in scores["torch"]:
        table.add_row(key, f"{scores['torch'][key]:.4f}", f"{scores['onnxruntime'][key]:.4f}",
                      f"{scores['onnxruntime'][key] - scores['torch'][key]:+.4f}")
    console.print(table)
    console.print(f"1 - cosine to torch over the {len(items)} images: max {cosine.max():.1e}, mean {cosine.mean():.1e}")
    return {"scores": scores, "max_1_minus_cos": float(cosine.max()), "mean_1_minus_cos": float(cosine.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of the model stage (a)")
    parser.add_argument("--pairs", type=int, default=3, help="(torch, adopted) pairs of whole index runs (b)")
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out of (a)")
    parser.add_argument("--quality", action="store_true", help="measure (c) only")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    console = Console(width=150)
    record: dict[str, object] = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                 "commit": git_commit(REPO), "cpu": platform.processor() or platform.machine(),
                                 "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__}
    if args.quality:
        record["quality"] = quality(console)
    else:
        record["whole_index"] = whole_index(console, args.pairs)  # first: a process that ran (a) may not outlive it
        record["model_stage"] = model_stage(console, args.rounds, not args.no_compile)
    if not args.no_record:
        append_result(RESULTS, record)


if __name__ == "__main__":
    main()
