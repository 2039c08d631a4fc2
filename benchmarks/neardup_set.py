"""A near-duplicate set with ground truth, built from the real photos of ../shared/datasets.

Originals: the distinct photos under photos/ (scikit-image, scikit-learn, one file per Caltech-101 photo, every
40th potato video frame so that no two originals are themselves near-duplicates) and CIFAR-10 test images
upscaled 4x. Copies: each original gets `copies` edited versions, each a random mix of crop, rescale, flip,
small rotation, brightness/contrast change and text overlay, always re-encoded as JPEG at quality 30-90.

The edits are written with Pillow on purpose: they are not the augmentation code used for training, so the
benchmark does not reward a model for having seen its exact transformations.
"""

from __future__ import annotations

import csv
import io
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

WORDS = ["holiday", "2024", "sale", "© photo", "DSC_0042", "hello", "watermark", "#tbt", "simsearch"]


@dataclass(frozen=True)
class Item:
    path: Path
    group: int
    is_original: bool
    edits: str


def originals(datasets: Path, cifar_count: int) -> list[Image.Image]:
    photos = datasets / "photos"
    images = [Image.open(p).convert("RGB") for p in sorted((photos / "skimage").iterdir())]
    images += [Image.open(p).convert("RGB") for p in sorted((photos / "sklearn").iterdir())]
    seen: set[str] = set()
    with open(photos / "caltech101-subset-groups.csv") as handle:
        for row in sorted(csv.DictReader(handle), key=lambda r: r["file"]):
            if row["photo"] not in seen:
                seen.add(row["photo"])
                images.append(Image.open(photos / "caltech101-subset" / row["file"]).convert("RGB"))
    frames = sorted((photos / "potato-frames").iterdir())[::40]
    images += [Image.open(p).convert("RGB") for p in frames]
    with zipfile.ZipFile(datasets / "cifar10" / "cifar10-test.zip") as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".jpg"))
        step = max(1, len(names) // cifar_count)
        for name in names[::step][:cifar_count]:
            small = Image.open(io.BytesIO(archive.read(name))).convert("RGB")
            images.append(small.resize((128, 128), Image.Resampling.BICUBIC))
    return images


def edit(image: Image.Image, rng: random.Random) -> tuple[Image.Image, list[str]]:
    """A random near-duplicate of `image`, and the names of the edits applied."""
    done = []
    w, h = image.size
    if rng.random() < 0.6:
        keep = rng.uniform(0.75, 0.95)
        cw, ch = int(w * keep), int(h * keep)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        image = image.crop((x, y, x + cw, y + ch))
        done.append("crop")
    if rng.random() < 0.6:
        scale = rng.uniform(0.4, 1.6)
        image = image.resize((max(16, int(image.width * scale)), max(16, int(image.height * scale))),
                             Image.Resampling.BILINEAR)
        done.append("rescale")
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
        done.append("flip")
    if rng.random() < 0.4:
        image = image.rotate(rng.uniform(-10, 10), resample=Image.Resampling.BILINEAR, expand=False)
        done.append("rotate")
    if rng.random() < 0.6:
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.3))
        image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.7, 1.3))
        done.append("brightness")
    if rng.random() < 0.4:
        draw = ImageDraw.Draw(image)
        size = max(8, image.height // rng.randint(6, 12))
        font = ImageFont.load_default(size=size)
        text = rng.choice(WORDS)
        draw.text((rng.randint(0, max(1, image.width // 2)), rng.randint(0, max(1, image.height - size))), text,
                  fill=rng.choice([(255, 255, 255), (0, 0, 0), (255, 220, 0)]), font=font)
        done.append("text")
    quality = rng.randint(30, 90)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    done.append(f"jpeg{quality}")
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), done


def build(datasets: Path, folder: Path, copies: int = 2, cifar_count: int = 1000, seed: int = 0) -> list[Item]:
    """Write originals and copies under `folder` (once); return them with their groups."""
    manifest = folder / "manifest.csv"
    if manifest.exists():
        with open(manifest) as handle:
            return [Item(folder / r["file"], int(r["group"]), r["original"] == "1", r["edits"])
                    for r in csv.DictReader(handle)]
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for group, image in enumerate(originals(datasets, cifar_count)):
        path = folder / f"g{group:05d}-original.png"
        image.save(path)
        items.append(Item(path, group, True, ""))
        for c in range(copies):
            copy, edits = edit(image, rng)
            path = folder / f"g{group:05d}-copy{c}.jpg"
            copy.save(path, quality=95)
            items.append(Item(path, group, False, "+".join(edits)))
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "group", "original", "edits"])
        for item in items:
            writer.writerow([item.path.name, item.group, int(item.is_original), item.edits])
    return items
