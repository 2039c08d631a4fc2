"""Dedup over WebDataset shards beside `simsearch dedup` over the same images as files, side by side in one run.

Builds once, under benchmarks/.cache/shard-dedup-v1/, the 800 ImageNet sample photos of the shared datasets
(photos/imagenet-sample) and, for a seeded quarter of them, one edited copy each from an untrained family of
benchmarks/edit_families.py (no collage: it needs CIFAR fillers), saved as JPEG at quality 85: as files (files/)
and as 4 WebDataset tar shards of the same bytes (shards/, the key the file's stem). Then, each round:

  (a) `simsearch index files/` into a fresh index, wall time from process start to exit, then `simsearch dedup
      --json` over that index (not timed: it embeds nothing);
  (b) `simsearch dedup shards/*.tar --manifest OUT.parquet`, wall time from process start to exit;

and reports pair precision and recall of each against the planted families (a pair: two images in one proposed
group; truth: a photo and its copy), the throughput ratio (b) / (a) of the fastest round of each, and, with
--ray, whether the Ray form (`retrieval.decisions.ray_dedup`) on a local two-node Ray (one CPU a node,
`tests/ray_cluster.py`) gives the same manifest rows as the one-machine form. Results are appended to
benchmarks/results/shard_dedup.jsonl.

    nice -n 5 python benchmarks/shard_dedup.py --rounds 2 --ray
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks"), str(REPO / "tests")]
# The Ray nodes' memory monitor is off: on a machine shared with other jobs, their memory would get this run's
# workers killed. Set before tests/process_sessions.py records the environment the nodes start with.
os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")

from PIL import Image  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import edit_families  # noqa: E402
from retrieval.datasets.locate import datasets_root  # noqa: E402
from results_file import append_result  # noqa: E402

CACHE = REPO / "benchmarks" / ".cache" / "shard-dedup-v1"
RESULTS = REPO / "benchmarks" / "results" / "shard_dedup.jsonl"
EDITED_SHARE = 0.25
SHARDS = 4
SEED = 0
console = Console()


def build() -> tuple[Path, list[Path], dict[str, str]]:
    """The files folder, the shards and each image's family (its photo's key), built once."""
    files, shards, families_file = CACHE / "files", CACHE / "shards", CACHE / "families.json"
    if families_file.is_file():
        return files, sorted(shards.glob("*.tar")), json.loads(families_file.read_text())
    photos = sorted((datasets_root() / "photos" / "imagenet-sample").iterdir())
    rng = random.Random(SEED)
    table = edit_families.families(None)
    untrained = [name for name in edit_families.UNTRAINED_FAMILIES if name in table]
    edited = set(rng.sample(range(len(photos)), int(len(photos) * EDITED_SHARE)))
    files.mkdir(parents=True, exist_ok=True)
    shards.mkdir(parents=True, exist_ok=True)
    samples: list[tuple[str, str, bytes]] = []
    family: dict[str, str] = {}
    for number, photo in enumerate(photos):
        key = photo.stem.replace(".", "_")
        samples.append((key, photo.suffix.lower().lstrip("."), photo.read_bytes()))
        family[key] = key
        if number in edited:
            name = rng.choice(untrained)
            copy = table[name](Image.open(photo).convert("RGB"), rng)
            buffer = io.BytesIO()
            copy.save(buffer, "JPEG", quality=85)
            samples.append((f"{key}__{name}", "jpg", buffer.getvalue()))
            family[f"{key}__{name}"] = key
    for key, extension, data in samples:
        (files / f"{key}.{extension}").write_bytes(data)
    per_shard = -(-len(samples) // SHARDS)
    for number in range(SHARDS):
        with tarfile.open(shards / f"{number:06d}.tar", "w") as archive:
            for key, extension, data in samples[number * per_shard:(number + 1) * per_shard]:
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    families_file.write_text(json.dumps(family))
    return files, sorted(shards.glob("*.tar")), family


def timed(*args: str, cwd: Path) -> tuple[float, str]:
    """Wall time of `simsearch ARGS` in a process of its own, and its stdout; exit 0 or 1 (some failed) only."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode not in (0, 1):
        raise SystemExit(f"simsearch {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    return time.perf_counter() - start, done.stdout


def pairs_of(groups: list[list[str]]) -> set[frozenset[str]]:
    return {frozenset(pair) for members in groups for pair in itertools.combinations(sorted(members), 2)}


def scores(predicted: set[frozenset[str]], truth: set[frozenset[str]]) -> tuple[float, float, int]:
    hits = len(predicted & truth)
    return hits / max(1, len(predicted)), hits / max(1, len(truth)), len(predicted)


def file_groups(output: str) -> list[list[str]]:
    return [[Path(group["keeper"]["path"]).stem, *(Path(other["path"]).stem for other in group["duplicates"])]
            for group in json.loads(output)]


def manifest_groups(rows: list[dict[str, object]]) -> list[list[str]]:
    by_group: dict[object, list[str]] = {}
    for row in rows:
        if row["group"] is not None:
            by_group.setdefault(row["group"], []).append(str(row["key"]))
    return list(by_group.values())


def ray_equal(shards: list[Path]) -> tuple[bool, float]:
    """Whether the Ray form's rows on a local two-node Ray equal the one-machine form's, and its wall time."""
    from retrieval.decisions.ray_dedup import dedup_shards_on_ray
    from ray_cluster import ray_cluster
    from retrieval.collection import Collection
    from retrieval.decisions.shard_dedup import dedup_shards
    from retrieval.models.embedding import Embedder
    from retrieval.models.model import DEFAULT_MODEL_FILE, load_default_model
    from retrieval.sources.shard_samples import SampleChunks

    model = load_default_model()
    threshold = Collection(None, model).threshold()
    local = dedup_shards(SampleChunks(shards), Embedder(model), threshold).rows
    with ray_cluster((1, 1)) as address:
        start = time.perf_counter()
        on_ray = dedup_shards_on_ray(shards, DEFAULT_MODEL_FILE, threshold, address=address)
        seconds = time.perf_counter() - start
    return on_ray == local, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ray", action="store_true", help="also compare the Ray form on a two-node local Ray")
    parser.add_argument("--no-record", action="store_true")
    options = parser.parse_args()
    files, shards, family = build()
    images = len(family)
    truth = pairs_of([[key for key, of in family.items() if of == photo] for photo in set(family.values())])
    index_times, shard_times = [], []
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        for round_number in range(options.rounds):
            index_dir = folder / f"index{round_number}"
            seconds, _ = timed("index", str(files), "--index", str(index_dir), cwd=folder)
            index_times.append(seconds)
            _, output = timed("dedup", "--index", str(index_dir), "--json", cwd=folder)
            by_files = file_groups(output)
            manifest = folder / f"manifest{round_number}.parquet"
            seconds, _ = timed("dedup", *map(str, shards), "--manifest", str(manifest), cwd=folder)
            shard_times.append(seconds)
            from retrieval.decisions.manifest import read_manifest

            rows = read_manifest(manifest)
            by_shards = manifest_groups(rows)
            console.print(f"round {round_number + 1}: index {index_times[-1]:.1f} s, shard dedup "
                          f"{shard_times[-1]:.1f} s")
    file_scores, shard_scores = scores(pairs_of(by_files), truth), scores(pairs_of(by_shards), truth)
    ratio = min(index_times) / min(shard_times)
    same_on_ray, ray_seconds = ray_equal(shards) if options.ray else (None, None)
    table = Table(title=f"dedup of {images} images ({len(truth)} planted pairs): files beside {len(shards)} "
                        "WebDataset shards, side by side")
    for column in ("run", "fastest wall s", "images/s", "pairs proposed", "pair precision", "pair recall"):
        table.add_column(column)
    table.add_row("simsearch index files/ (+ dedup, untimed)", f"{min(index_times):.1f}",
                  f"{images / min(index_times):.1f}", str(file_scores[2]), f"{file_scores[0]:.4f}",
                  f"{file_scores[1]:.4f}")
    table.add_row("simsearch dedup shards --manifest", f"{min(shard_times):.1f}", f"{images / min(shard_times):.1f}",
                  str(shard_scores[2]), f"{shard_scores[0]:.4f}", f"{shard_scores[1]:.4f}")
    console.print(table)
    console.print(f"shard throughput / index throughput: {ratio:.3f} (goal >= 0.90); pairs equal: "
                  f"{pairs_of(by_files) == pairs_of(by_shards)}"
                  + ("" if same_on_ray is None else f"; Ray form on two nodes, rows equal: {same_on_ray} "
                                                      f"({ray_seconds:.1f} s)"))
    if options.no_record:
        return
    result = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                 text=True).stdout.strip(),
        "images": images, "planted_pairs": len(truth), "shards": len(shards), "rounds": options.rounds,
        "cpus": os.cpu_count(), "index_seconds": [round(t, 2) for t in index_times],
        "shard_seconds": [round(t, 2) for t in shard_times], "throughput_ratio": round(ratio, 4),
        "files": {"pairs": file_scores[2], "pair_precision": round(file_scores[0], 4),
                  "pair_recall": round(file_scores[1], 4)},
        "shards_run": {"pairs": shard_scores[2], "pair_precision": round(shard_scores[0], 4),
                       "pair_recall": round(shard_scores[1], 4)},
        "pairs_equal": pairs_of(by_files) == pairs_of(by_shards),
        "ray_two_nodes_rows_equal": same_on_ray, "ray_seconds": None if ray_seconds is None else round(ray_seconds, 2),
    }
    append_result(RESULTS, result)
    console.print(f"appended to {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
