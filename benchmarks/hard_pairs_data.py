"""The images of benchmarks/hard_negatives.py, split by split, and their embeddings (cached).

Each source is a list of images with two labels: `photo`, which distinct photo an image shows (two images of one
photo, an original and its edited copy, are never a different pair), and `kind`, the subject, class, alphabet
or group an image belongs to (the hard subset of a source is its pairs of one kind). Which images each split
takes, and why none of them was trained on, is written in benchmarks/hard_negatives.py.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
for _path in (str(REPO), str(REPO / "benchmarks")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import neardup_photos  # noqa: E402
from edit_families import UNTRAINED_FAMILIES  # noqa: E402
from retrieval.models.embedding import Embedder  # noqa: E402
from retrieval.models.model import EmbeddingModel  # noqa: E402
from retrieval.sources.decode import Source  # noqa: E402
from retrieval.sources.embed import embed_batches  # noqa: E402

CACHE = REPO / "benchmarks" / ".cache" / "hard-negatives"
CIFAR_PER_CLASS = 200
OMNIGLOT_DRAWERS = {"validation": 2, "test": 3}
"""Drawings kept of each character (the first drawers by file name): the evaluation set has 659 characters, the
background set 964."""
FLAT_IMAGES = 400
FLAT_SIDE = 256
POTATO_GAP = 40
"""Frames at least this far apart in the video are taken for different photos (see hard_negatives.py)."""
RELATED_SUBJECTS: tuple[tuple[str, str, str], ...] = (
    ("fish", "n01440764", "n01498041"), ("birds", "n01514668", "n01616318"), ("reptiles and amphibians",
    "n01629819", "n01756291"), ("spiders", "n01770081", "n01776313"), ("birds", "n01795545", "n01860187"),
    ("crustaceans", "n01978287", "n01990800"), ("birds", "n02002556", "n02058221"), ("dogs", "n02085620",
    "n02113978"), ("wild dogs, cats and bears", "n02114548", "n02137549"), ("insects", "n02165105", "n02281787"),
    ("hoofed mammals", "n02391049", "n02437616"), ("primates", "n02480495", "n02497673"), ("fish", "n02526121",
    "n02655020"), ("food", "n07565083", "n07930864"), ("landscapes", "n09193705", "n09472597"),
    ("fungi", "n12985857", "n13054560"))
"""ImageNet classes of one kind of subject, by ranges of WordNet ids (the ILSVRC class order): a pair of photos
of two dog breeds is a pair of one subject."""


@dataclass(frozen=True)
class SourceImages:
    """The images of one source in one split: how to read each, and its labels."""

    name: str
    keys: list[str]
    """A stable name of each image (the cache key is made of them)."""
    read: Callable[[int], Source]
    photo: np.ndarray
    """Which distinct photo each image shows: pairs of one photo are not different pairs."""
    kind: np.ndarray
    """The subject, class, alphabet or group of each image ("" for none): pairs of one kind are the hard ones."""
    position: np.ndarray | None = None
    """Frame numbers (the video source only)."""
    family: np.ndarray | None = None
    """The edit family of each image ("" for an original; the edited-photo source only)."""


def related_subject(name: str) -> str:
    """The RELATED_SUBJECTS group of an ImageNet file name, "" when none."""
    wnid = name.split("_", 1)[0]
    return next((group for group, low, high in RELATED_SUBJECTS if low <= wnid <= high), "")


def photo_kind(source: str) -> str:
    """The related-subject group of a photo (its path under the datasets folder)."""
    folder, name = source.split("/")[-2:]
    if folder == "imagenet-sample":
        return related_subject(name)
    return "caltech101 (14 of 17 ants)" if folder == "caltech101-subset" else ""


def _from_paths(paths: list[Path]) -> Callable[[int], Source]:
    return lambda i: Source(i, path=str(paths[i]))


class _Zip:
    """Members of a zip archive as sources; opened lazily (the decoding workers run in other processes)."""

    def __init__(self, archive: Path, names: list[str]) -> None:
        self.archive, self.names = archive, names
        self._zip: zipfile.ZipFile | None = None

    def __call__(self, i: int) -> Source:
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.archive)
        return Source(i, data=self._zip.read(self.names[i]))


def photo_set(datasets: Path, split: str) -> SourceImages:
    """The near-duplicate photo set of `split` (benchmarks/neardup_photos.py): each original of the split and one
    edited copy per family (two stacked), built once under benchmarks/.cache."""
    items = neardup_photos.build(datasets, neardup_photos.default_folder(split), split)
    paths = [item.path for item in items]
    return SourceImages(f"photos-{split}", [p.name for p in paths], _from_paths(paths),
                        np.array([item.group for item in items]),
                        np.array([photo_kind(item.source) for item in items]),
                        family=np.array([item.family for item in items]))


def cifar(datasets: Path, split: str) -> SourceImages:
    """CIFAR-10: the first CIFAR_PER_CLASS images of each class by file name, from the train archive for
    validation and the test archive for test (32x32, upscaled by the model's own preprocessing)."""
    archive = datasets / "cifar10" / ("cifar10-train.zip" if split == "validation" else "cifar10-test.zip")
    with zipfile.ZipFile(archive) as handle:
        names = sorted(n for n in handle.namelist() if n.endswith(".jpg"))
    by_class: dict[str, list[str]] = {}
    for name in names:
        by_class.setdefault(name.split("/")[-2], []).append(name)
    chosen = [name for label in sorted(by_class) for name in by_class[label][:CIFAR_PER_CLASS]]
    return SourceImages(f"cifar-{split}", chosen, _Zip(archive, chosen), np.arange(len(chosen)),
                        np.array([name.split("/")[-2] for name in chosen]))


def omniglot(datasets: Path, split: str) -> SourceImages:
    """Omniglot: the background set for validation, the evaluation set for test; the first drawers of every
    character (`OMNIGLOT_DRAWERS`). Kind: the alphabet. Every drawing is its own photo, so two people's drawings
    of one character are a different pair (as they are two files nobody made from the other)."""
    archive = datasets / "omniglot" / ("images_background.zip" if split == "validation" else "images_evaluation.zip")
    with zipfile.ZipFile(archive) as handle:
        names = sorted(n for n in handle.namelist() if n.endswith(".png"))
    by_character: dict[str, list[str]] = {}
    for name in names:
        by_character.setdefault(name.rsplit("/", 1)[0], []).append(name)
    chosen = [name for character in sorted(by_character) for name in by_character[character][:OMNIGLOT_DRAWERS[split]]]
    return SourceImages(f"omniglot-{split}", chosen, _Zip(archive, chosen), np.arange(len(chosen)),
                        np.array([name.split("/")[1] for name in chosen]))


def potato_frames(datasets: Path) -> SourceImages:
    """Every frame of the potato video (test only); `position` is the frame's number."""
    paths = sorted((datasets / "photos" / "potato-frames").glob("*.png"))
    return SourceImages("potato-frames", [p.name for p in paths], _from_paths(paths), np.arange(len(paths)),
                        np.full(len(paths), "potatoes"), position=np.arange(len(paths)))


def flat_image(seed: int, index: int) -> bytes:
    """A generated near-flat image (PNG): a solid colour (half of them), else a gentle two-colour gradient in a
    random direction with faint noise (at most 6 grey levels apart from the gradient)."""
    rng = np.random.default_rng([seed, index])
    hue, saturation, value = rng.random(), rng.random(), rng.random()
    base = np.array(colorsys.hsv_to_rgb(hue, saturation, value)) * 255
    if index % 2 == 0:
        pixels = np.broadcast_to(base, (FLAT_SIDE, FLAT_SIDE, 3))
    else:
        other = np.clip(base + rng.normal(0, 24, 3), 0, 255)
        angle = rng.uniform(0, 2 * np.pi)
        y, x = np.mgrid[0:FLAT_SIDE, 0:FLAT_SIDE] / (FLAT_SIDE - 1)
        ramp = np.clip(0.5 + (np.cos(angle) * (x - 0.5) + np.sin(angle) * (y - 0.5)), 0, 1)[..., None]
        pixels = base * (1 - ramp) + other * ramp + rng.uniform(-3, 3, (FLAT_SIDE, FLAT_SIDE, 1))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), "RGB").save(buffer, "PNG")
    return buffer.getvalue()


def flat(split: str) -> SourceImages:
    """FLAT_IMAGES generated near-flat images (`flat_image`), seeded by the split."""
    seed = {"validation": 1, "test": 2}[split]
    keys = [f"flat-{seed}-{i}" for i in range(FLAT_IMAGES)]
    return SourceImages(f"flat-{split}", keys, lambda i: Source(i, data=flat_image(seed, i)),
                        np.arange(FLAT_IMAGES), np.full(FLAT_IMAGES, "near-flat"))


def split_sources(datasets: Path, split: str) -> list[SourceImages]:
    """Every source of `split` ("validation" or "test")."""
    sources = [photo_set(datasets, split), cifar(datasets, split), omniglot(datasets, split), flat(split)]
    return sources + ([potato_frames(datasets)] if split == "test" else [])


def embeddings(model: EmbeddingModel, images: SourceImages) -> np.ndarray:
    """The L2-normalised embedding of every image of `images` (decoded as `simsearch index` decodes), cached under
    benchmarks/.cache/hard-negatives by the model's content hash and the images' keys."""
    key = hashlib.sha256("\n".join([model.content_hash, images.name, *images.keys]).encode()).hexdigest()[:20]
    path = CACHE / f"{images.name}-{key}.npy"
    if path.exists():
        return np.load(path)
    sources = [images.read(i) for i in range(len(images.keys))]
    results = [r for batch in embed_batches(Embedder(model), sources, max_pixels=100_000_000) for r in batch]
    failed = [f"{images.keys[r.key]}: {r.error}" for r in results if r.error is not None]
    if failed:
        raise SystemExit(f"every image of the benchmark must decode: {failed[0]}")
    vectors = np.stack([r.vector for r in results]).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def untrained_positive_mask(images: SourceImages) -> np.ndarray:
    """Which images of the photo set are copies in a family the model never trained on."""
    assert images.family is not None
    return np.isin(images.family, UNTRAINED_FAMILIES)
