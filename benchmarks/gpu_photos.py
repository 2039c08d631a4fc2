"""Photo-like JPEGs of ImageNet size made from the repository's own demo photos.

For benchmarks on a machine where ../shared/datasets is absent (the lent GPU machine: only the repository
travels there). Photo i is made from demo photo i mod 10 by a seeded random crop (35 to 100 % of its area, of a
photo's aspect ratio), a resize to about 500x375 (landscape; a quarter of them portrait, 375x500; the short side
between 333 and 375 like ImageNet's), a horizontal flip half the time, a colour shift (a gain per channel, a
brightness offset and a gamma), sensor-like noise, and JPEG re-encoding at a quality between 85 and 95. Each photo
depends only on (seed, i), so every file differs (no two share a SHA-256, which the indexer would treat as
copies) and a run is reproducible; the work is spread over all cores.

    python benchmarks/gpu_photos.py /tmp/photos --count 2000           # about 1 s on 16 cores
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SOURCES = REPO / "demo" / "photos"
LONG_SIDE = 500
SHORT_SIDES = (333, 375)
_sources: list[Image.Image] = []


def source_paths(folder: Path = SOURCES) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})


def _load_sources(paths: list[str]) -> None:
    global _sources
    _sources = []
    for path in paths:
        with Image.open(path) as im:
            _sources.append(im.convert("RGB"))


def make_photo(seed: int, index: int) -> tuple[Image.Image, int]:
    """Photo `index` (needs `_load_sources` first) and the JPEG quality to save it at."""
    rng = np.random.default_rng([seed, index])
    source = _sources[index % len(_sources)]
    portrait = rng.random() < 0.25
    short = int(rng.integers(SHORT_SIDES[0], SHORT_SIDES[1] + 1))
    size = (short, LONG_SIDE) if portrait else (LONG_SIDE, short)
    aspect = size[0] / size[1]
    w, h = source.size
    area = rng.uniform(0.35, 1.0) * w * h
    cw = min(w, max(16, int(round((area * aspect) ** 0.5))))
    ch = min(h, max(16, int(round(cw / aspect))))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    image = source.resize(size, Image.Resampling.BICUBIC, box=(x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = pixels ** rng.uniform(0.8, 1.25)
    pixels = pixels * rng.uniform(0.85, 1.15, size=3) + rng.uniform(-0.08, 0.08)
    pixels = pixels * 255.0 + rng.normal(0.0, rng.uniform(2.0, 6.0), size=pixels.shape)
    photo = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return photo, int(rng.integers(85, 96))


def _write(job: tuple[int, int, str]) -> int:
    seed, index, folder = job
    photo, quality = make_photo(seed, index)
    target = os.path.join(folder, f"photo{index:05d}.jpg")
    temporary = f"{target}.tmp"
    photo.save(temporary, format="JPEG", quality=quality)
    os.replace(temporary, target)
    return os.path.getsize(target)


def generate(folder: Path, count: int, seed: int = 0, jobs: int | None = None) -> int:
    """Write `count` photos into `folder` (replacing any earlier photo of the same number); their total bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [str(p) for p in source_paths()]
    if not paths:
        raise SystemExit(f"no source photos in {SOURCES}")
    work = [(seed, i, str(folder)) for i in range(count)]
    jobs = max(1, min(jobs or os.cpu_count() or 1, count))
    if jobs == 1:
        _load_sources(paths)
        return sum(map(_write, work))
    context = get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with context.Pool(jobs, initializer=_load_sources, initargs=(paths,)) as pool:
        return sum(pool.imap_unordered(_write, work, chunksize=max(1, min(32, count // (4 * jobs)))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=None, help="processes (default: every core)")
    args = parser.parse_args()
    started = time.perf_counter()
    total = generate(args.folder, args.count, args.seed, args.jobs)
    seconds = time.perf_counter() - started
    print(f"{args.count} photos ({total / args.count / 1e3:.0f} kB each on average) in {args.folder} "
          f"in {seconds:.1f} s")


if __name__ == "__main__":
    main()
