"""The photo near-duplicate set: the originals of one split of benchmarks/photo_split.py, at their photo
resolution, and edited copies of each in the families of benchmarks/edit_families.py.

For each original (its file copied byte for byte) the builder writes `copies_per_family` copies of every family
(twice that for "stacked", the most varied), each saved as JPEG at a random quality 60-95 or, one time in five,
as PNG. A copy's randomness comes from a seed made of (seed, the photo's file name, family, copy number) alone, so
the set is the same whatever the order or number of worker processes, and one photo's copies do not depend on
the other photos. Fillers for collages are CIFAR-10 *test* images, which are no photo of any split.

Built once under `folder` and cached there: `manifest.csv` (written last, so an interrupted build is redone)
lists every file; `build.json` records the parameters, and a cached folder built with others is refused.

    python benchmarks/neardup_photos.py                 # builds validation and test into benchmarks/.cache/
    python benchmarks/neardup_photos.py --split test --copies 2
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
for _path in (str(REPO), str(REPO / "benchmarks")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import edit_families  # noqa: E402
import photo_split  # noqa: E402
from retrieval.datasets.locate import datasets_root  # noqa: E402

DATASETS = datasets_root()
CACHE = REPO / "benchmarks" / ".cache"
VERSION = 2  # bump when the families or the builder change what they write
STACKED_COPIES = 2  # stacked copies per copies_per_family
PNG_SHARE = 0.2
JPEG_QUALITY = (60, 95)


@dataclass(frozen=True)
class Item:
    """One file of the set: an original (family "") or a copy, `group` the index of its photo in the split."""

    path: Path
    group: int
    is_original: bool
    family: str
    source: str = ""  # the photo's path relative to the datasets folder
    detail: str = ""  # for a copy, how it was saved (and for stacked, the families composed)


def default_folder(split: str, copies_per_family: int = 1, seed: int = 0) -> Path:
    """Where the set of these parameters is cached by default (benchmarks/.cache is git-ignored)."""
    return CACHE / f"neardup-photos-{split}-c{copies_per_family}-s{seed}-v{VERSION}"


def copy_seed(seed: int, name: str, family: str, copy: int) -> int:
    digest = hashlib.sha256(f"{seed}\0{name}\0{family}\0{copy}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def load_photo(path: Path) -> Image.Image:
    """The photo as the indexer sees it: EXIF orientation applied, converted to RGB."""
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def _copy_counts(copies_per_family: int) -> dict[str, int]:
    return {f: copies_per_family * (STACKED_COPIES if f == "stacked" else 1) for f in edit_families.FAMILY_NAMES}


_FAMILIES: dict[str, edit_families.Family] | None = None


def _init_worker(fillers: edit_families.FillerProvider) -> None:
    global _FAMILIES
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    _FAMILIES = edit_families.families(fillers)


def _build_photo(task: tuple[int, str, str, str, int, int]) -> list[tuple[str, int, int, str, str, str]]:
    """Write one photo's original and copies; return their manifest rows."""
    group, path_text, source, folder_text, copies_per_family, seed = task
    assert _FAMILIES is not None
    path, folder = Path(path_text), Path(folder_text)
    stem = f"g{group:05d}"
    original = folder / f"{stem}-original{path.suffix.lower()}"
    shutil.copyfile(path, original)
    rows = [(original.name, group, 1, "", source, "")]
    image = load_photo(path)
    for family, count in _copy_counts(copies_per_family).items():
        for k in range(count):
            rng = random.Random(copy_seed(seed, path.name, family, k))
            detail = []
            if family == "stacked":
                # stacked_choice makes the first draws: a copy of the rng tells which families it composes
                probe = random.Random()
                probe.setstate(rng.getstate())
                pool = tuple(n for n in edit_families.STACKABLE if n in _FAMILIES)
                detail.append("+".join(edit_families.stacked_choice(probe, pool)))
            copy = _FAMILIES[family](image, rng)
            saver = random.Random(copy_seed(seed, path.name, family + ":save", k))
            if saver.random() < PNG_SHARE:
                target = folder / f"{stem}-{family}{k}.png"
                copy.save(target, "PNG")
                detail.append("png")
            else:
                quality = saver.randint(*JPEG_QUALITY)
                target = folder / f"{stem}-{family}{k}.jpg"
                copy.save(target, "JPEG", quality=quality)
                detail.append(f"jpeg{quality}")
            rows.append((target.name, group, 0, family, source, " ".join(detail)))
    return rows


def _read_manifest(folder: Path) -> list[Item]:
    with open(folder / "manifest.csv", newline="") as handle:
        return [Item(folder / r["file"], int(r["group"]), r["original"] == "1", r["family"], r["source"],
                     r["detail"]) for r in csv.DictReader(handle)]


def build(datasets: Path, folder: Path, split: str, copies_per_family: int = 1, seed: int = 0,
          workers: int = 2) -> list[Item]:
    """Write the originals of `split` ("train", "validation" or "test") and their copies under `folder`, once;
    return every file as an Item, originals and copies, in group order. A folder already built with these
    parameters is read back, not rebuilt; one built with other parameters raises ValueError."""
    if split not in photo_split.SPLITS:
        raise ValueError(f"unknown split {split!r}: one of {', '.join(photo_split.SPLITS)}")
    photos = photo_split.split_photos(datasets)[split]
    parameters = {"version": VERSION, "split": split, "copies_per_family": copies_per_family, "seed": seed,
                  "photos": len(photos), "families": _copy_counts(copies_per_family)}
    folder = Path(folder)
    if (folder / "manifest.csv").exists():
        recorded = json.loads((folder / "build.json").read_text()) if (folder / "build.json").exists() else None
        if recorded is None or {k: recorded.get(k) for k in parameters} != parameters:
            raise ValueError(f"{folder} holds a set built with other parameters ({recorded}); not {parameters}")
        return _read_manifest(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tasks = [(group, str(path), path.relative_to(datasets).as_posix(), str(folder), copies_per_family, seed)
             for group, path in enumerate(photos)]
    fillers = edit_families.CifarFillers(datasets / "cifar10" / "cifar10-test.zip")
    started = time.perf_counter()
    # spawn, not fork: the caller may have started torch's thread pools, which a forked child inherits broken
    with ProcessPoolExecutor(max_workers=max(1, workers), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(fillers,)) as pool:
        rows = [row for photo_rows in pool.map(_build_photo, tasks, chunksize=1) for row in photo_rows]
    elapsed = time.perf_counter() - started
    temporary = folder / "manifest.csv.tmp"
    with open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "group", "original", "family", "source", "detail"])
        writer.writerows(rows)
    (folder / "build.json").write_text(json.dumps({**parameters, "build_seconds": round(elapsed, 1),
                                                   "items": len(rows)}, indent=1) + "\n")
    os.replace(temporary, folder / "manifest.csv")
    return _read_manifest(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", action="append", choices=photo_split.SPLITS,
                        help="a split to build (repeatable); default validation and test")
    parser.add_argument("--copies", type=int, default=1, help="copies per family (stacked: twice as many)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    for split in args.split or ["validation", "test"]:
        folder = default_folder(split, args.copies, args.seed)
        started = time.perf_counter()
        items = build(DATASETS, folder, split, args.copies, args.seed, args.workers)
        families = Counter(item.family for item in items if not item.is_original)
        originals = sum(item.is_original for item in items)
        print(f"{split}: {len(items)} items ({originals} originals, {len(items) - originals} copies: "
              f"{', '.join(f'{f} {n}' for f, n in families.items())}) in {time.perf_counter() - started:.1f} s "
              f"under {folder}")


if __name__ == "__main__":
    main()
