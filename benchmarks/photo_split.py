"""The one written-down split of the real photos under ../shared/datasets/photos into train, validation and test.

    imagenet-sample/*.JPEG (800 photos, one per ImageNet class)
        split by the SHA-256 of the file name (not by directory order, so adding or removing a file moves no
        other file): the first 8 bytes of the digest, as an integer, modulo 100 give a bucket;
        buckets 0-59 train (~60 %), 60-69 validation (~10 %), 70-99 test (~30 %).
    every other photo source, test only (never trained on, never used to choose a model):
        skimage/*           the scikit-image test photographs, less motorcycle_right.png (the right-hand view of
                            the stereo pair whose left-hand view is kept: the two are near-duplicates of each
                            other, so keeping both would make two "different" originals that are the same photo)
        sklearn/*           china.jpg and flower.jpg
        caltech101-subset/  one file per photo (caltech101-subset-groups.csv), the largest of its rescaled copies
    not used: potato-frames/, video frames with no labels. Frames far apart in the video are different potatoes
        or the same potato turned, and nothing says which, so no pair of them can be scored as "different
        photos"; scored as if they all were (every 40th frame, 11 of them), their cross pairs (about 1,100
        pairs of an edited frame and another frame: potatoes on black) are more than 0.1 % of the different
        pairs of the test set, so they alone set the threshold at FPR 1e-3 for every method.

Why: the near-duplicate benchmark must not flatter. A model may be trained on `train` only (and tuned on
`validation`); whatever is scored comes from `test`, so no scored photo, nor an edit of it, was ever seen in
training. The test-only sources are also of other kinds than ImageNet (classic test images, video frames, small
Caltech photos), which shows whether what the model learnt transfers beyond the distribution it was trained on.

    python benchmarks/photo_split.py        # prints the sizes of each split and pool
"""

from __future__ import annotations

import csv
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from retrieval.datasets.locate import datasets_root  # noqa: E402

DATASETS = datasets_root()

SPLITS = ("train", "validation", "test")
TRAIN_BUCKETS = range(0, 60)
VALIDATION_BUCKETS = range(60, 70)
TEST_BUCKETS = range(70, 100)
SKIMAGE_EXCLUDED = frozenset({"motorcycle_right.png"})  # near-duplicate of motorcycle_left.png


@dataclass(frozen=True)
class PhotoSplit:
    """Paths of the photos of each split, each list sorted (ImageNet first, then the test-only sources)."""

    train: list[Path]
    validation: list[Path]
    test: list[Path]

    def __getitem__(self, split: str) -> list[Path]:
        if split not in SPLITS:
            raise KeyError(f"unknown split {split!r}: one of {', '.join(SPLITS)}")
        return getattr(self, split)


def bucket(name: str) -> int:
    """0-99, a stable hash of a file name (its SHA-256, the first 8 bytes as an integer, modulo 100)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") % 100


def imagenet_split_of(name: str) -> str:
    """The split of the ImageNet photo named `name` (a file name, no directory)."""
    b = bucket(name)
    if b in TRAIN_BUCKETS:
        return "train"
    if b in VALIDATION_BUCKETS:
        return "validation"
    return "test"


def imagenet_photos(datasets: Path = DATASETS) -> list[Path]:
    return sorted((datasets / "photos" / "imagenet-sample").glob("*.JPEG"))


def test_only_photos(datasets: Path = DATASETS) -> list[Path]:
    """The photos of every source but ImageNet, one file per distinct photo: test only."""
    photos = datasets / "photos"
    paths = [p for p in sorted((photos / "skimage").iterdir()) if p.is_file() and p.name not in SKIMAGE_EXCLUDED]
    paths += [p for p in sorted((photos / "sklearn").iterdir()) if p.is_file()]
    largest: dict[str, tuple[int, str]] = {}
    with open(photos / "caltech101-subset-groups.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            key = (-int(row["width"]) * int(row["height"]), row["file"])  # largest first, then by name
            if row["photo"] not in largest or key < largest[row["photo"]]:
                largest[row["photo"]] = key
    paths += sorted(photos / "caltech101-subset" / name for _, name in largest.values())
    return paths


def split_photos(datasets: Path = DATASETS) -> PhotoSplit:
    """The split (see the module docstring). Raises FileNotFoundError when the ImageNet sample is missing."""
    imagenet = imagenet_photos(datasets)
    if not imagenet:
        raise FileNotFoundError(f"no photos under {datasets / 'photos' / 'imagenet-sample'}")
    parts: dict[str, list[Path]] = {s: [] for s in SPLITS}
    for path in imagenet:
        parts[imagenet_split_of(path.name)].append(path)
    parts["test"] += test_only_photos(datasets)
    return PhotoSplit(train=parts["train"], validation=parts["validation"], test=parts["test"])


def photos_of(split: str, datasets: Path = DATASETS) -> list[Path]:
    """The photos of one split: "train", "validation" or "test"."""
    return split_photos(datasets)[split]


if __name__ == "__main__":
    split = split_photos()
    imagenet_test = sum(1 for p in split.test if p.parent.name == "imagenet-sample")
    print(f"train {len(split.train)}  validation {len(split.validation)}  "
          f"test {len(split.test)} (imagenet {imagenet_test}, test-only sources {len(split.test) - imagenet_test})")
