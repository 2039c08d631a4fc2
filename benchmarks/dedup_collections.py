"""Dedup out of the box on collections that look like users': pair precision, pair recall and false groups at the
default threshold, and proposed pairs on collections with no duplicate at all.

Collections (built once under benchmarks/.cache/dedup-collections-v1/, every choice seeded; the photos' copies are
the cached set of benchmarks/neardup_photos.py, built there if missing):

  photos-S   (S = 0, 1, 2) the TEST split of benchmarks/photo_split.py at photo resolution (ImageNet photos of the
             test buckets, among them related classes such as the dog breeds; the scikit-image and scikit-learn
             photos; Caltech-101 one file per photo, 14 of them ants), `NEAR_FLAT` distinct near-flat images
             (one colour with a faint gradient and grain, 640x480: under the pixel rule's flatness), and edited
             copies: `DUPLICATED` of the photos get 1 or 2 copies drawn from their copies in the UNTRAINED edit
             families of benchmarks/neardup_photos.py (overlay, border, perspective, quantise, occlude, reencode,
             collage, stacked; never the kornia views the shipped model's head was fitted with), and half of the
             near-flat images a re-saved copy (JPEG quality 60-90, half the size). Nothing of the train split.
  cifar-200      200 distinct CIFAR-10 test images (32x32)
  omniglot-200   200 distinct Omniglot characters (one drawing each, 105x105, the evaluation alphabets)
  solid-200      200 solid colours, uniform at random in RGB (256x256 PNG)

Methods, side by side, each at the threshold it would decide with out of the box:

  shipped model, simsearch dedup   the shipped model at the default threshold (`Collection.threshold_choice`:
                                   whatever the shipped calibration says when this runs), grouped exactly as
                                   `simsearch dedup` groups (`retrieval.decisions.dedup.exact_duplicates`: the
                                   look-alike check, the pixel rule for tiny and flat images, keeper-centred groups)
  shipped model, --lookalikes      the same, near-duplicates asked for in a collection of look-alikes too: the
                                   pixel rule alone
  shipped model, embedding only    the same threshold and groups without the look-alike check and the pixel rule:
                                   what those two rules change
  raw backbone, simsearch dedup    the same EfficientNet-Lite0 with untrained GeM pooling and no head (the
                                   candidate benchmarks/train_default_photo_model.py starts from), which has no
                                   default threshold: at the one where the pairs of the validation split of
                                   benchmarks/near_duplicates.py are grouped with precision 0.999 (as the shipped
                                   calibration's precision levels are measured), with both rules
  pHash                            imagehash's 64-bit pHash, keeper-centred groups by Hamming distance at the
                                   threshold measured the same way on the validation split; no rules

A pair is true when both files show one photo (an original and its copies); predicted when both are in one group
(keeper and others). A false group holds two photos. On the collections without duplicates every proposed pair is
false. Goal (issue 23): precision >= 0.98 with recall >= 0.90 on the photos; at most one proposed pair in 200
images on the others.

    pip install imagehash                 # the `bench` extra
    python benchmarks/dedup_collections.py

Embeddings are kept under benchmarks/.cache/embeddings by model and file (1,335 files; about 100 s a model on 2
cores the first time). Results are appended to benchmarks/results/dedup_collections.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import random
import sys
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
for _path in (str(REPO), str(REPO / "benchmarks")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import neardup_photos  # noqa: E402
from edit_families import UNTRAINED_FAMILIES  # noqa: E402
from near_duplicates import cached_embeddings, embed, phash_bits, phash_distances, threshold_at_precision  # noqa: E402
from retrieval.collection import Collection  # noqa: E402
from retrieval.datasets.locate import datasets_root  # noqa: E402
from retrieval.decisions.dedup import Candidate, duplicate_groups, exact_duplicates  # noqa: E402
from retrieval.decisions.pixel_rule import PixelSignature  # noqa: E402
from retrieval.models.model import (EmbeddingModel, build_model, load_default_model,  # noqa: E402
                                    pretrained_backbone_spec)
from retrieval.sources.file_identity import file_id  # noqa: E402
from retrieval.vectors.unit_distance import pairwise_distances  # noqa: E402

DATASETS = datasets_root()
CACHE = REPO / "benchmarks" / ".cache"
FOLDER = CACHE / "dedup-collections-v1"
RESULTS = REPO / "benchmarks" / "results" / "dedup_collections.jsonl"
DUPLICATED = 0.4
"""The share of photos given edited copies: most photos of a user's folder have none."""
NEAR_FLAT = 20
PHOTO_SEEDS = (0, 1, 2)
DISTINCT = 200


@dataclass(frozen=True)
class Member:
    """One file of a collection; `photo` names what it shows (an original and its copies share it)."""

    path: Path
    photo: str
    family: str = ""
    """For an edited copy, its edit family (else "")."""


def _near_flat(seed: int) -> Image.Image:
    """One colour, a faint smooth gradient and grain: RMS spread about 2-4 levels, under the pixel rule's flatness."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(20, 235, 3)
    low = rng.standard_normal((3, 4, 3))
    field = np.asarray(Image.fromarray(((low - low.min()) / np.ptp(low) * 255).astype(np.uint8))
                       .resize((640, 480), Image.Resampling.BICUBIC), np.float32) / 255.0 - 0.5
    pixels = base + 8.0 * field + rng.normal(0.0, 1.0, field.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _near_flat_members(folder: Path, rng: random.Random) -> list[Member]:
    members = []
    for i in range(NEAR_FLAT):
        path = folder / f"flat{i:02d}.png"
        if not path.exists():
            _near_flat(1000 + i).save(path)
        members.append(Member(path, f"flat{i:02d}"))
        if i % 2 == 0:
            copy = folder / f"flat{i:02d}-resaved.jpg"
            if not copy.exists():
                image = Image.open(path).convert("RGB")
                image.resize((320, 240), Image.Resampling.BILINEAR).save(copy, "JPEG", quality=rng.randint(60, 90))
            members.append(Member(copy, f"flat{i:02d}", "flat re-saved"))
    return members


def photo_collection(seed: int) -> list[Member]:
    """photos-`seed`: every test photo, `NEAR_FLAT` near-flat images, and edited copies of a share of them."""
    items = neardup_photos.build(DATASETS, neardup_photos.default_folder("test"), "test")
    rng = random.Random(seed)
    copies: dict[int, list[neardup_photos.Item]] = {}
    members = []
    for item in items:
        if item.is_original:
            members.append(Member(item.path, f"g{item.group}"))
        elif item.family in UNTRAINED_FAMILIES:
            copies.setdefault(item.group, []).append(item)
    for group in sorted(copies):
        if rng.random() < DUPLICATED:
            members += [Member(copy.path, f"g{group}", copy.family)
                        for copy in rng.sample(copies[group], rng.choice((1, 2)))]
    flat = FOLDER / "near-flat"
    flat.mkdir(parents=True, exist_ok=True)
    return members + _near_flat_members(flat, random.Random(seed))


def _from_zip(archive: Path, names: list[str], folder: Path) -> list[Member]:
    folder.mkdir(parents=True, exist_ok=True)
    members = []
    with zipfile.ZipFile(archive) as handle:
        for i, name in enumerate(names):
            path = folder / f"{i:03d}{Path(name).suffix}"
            if not path.exists():
                path.write_bytes(handle.read(name))
            members.append(Member(path, name))
    return members


def cifar_collection() -> list[Member]:
    archive = DATASETS / "cifar10" / "cifar10-test.zip"
    with zipfile.ZipFile(archive) as handle:
        names = sorted(n for n in handle.namelist() if n.endswith(".jpg"))
    return _from_zip(archive, random.Random(0).sample(names, DISTINCT), FOLDER / "cifar-200")


def omniglot_collection() -> list[Member]:
    archive = DATASETS / "omniglot" / "images_evaluation.zip"
    with zipfile.ZipFile(archive) as handle:
        drawings: dict[str, list[str]] = {}
        for name in sorted(n for n in handle.namelist() if n.endswith(".png")):
            drawings.setdefault(str(Path(name).parent), []).append(name)
    rng = random.Random(0)
    return _from_zip(archive, [rng.choice(drawings[c]) for c in rng.sample(sorted(drawings), DISTINCT)],
                     FOLDER / "omniglot-200")


def solid_collection() -> list[Member]:
    folder = FOLDER / "solid-200"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    members = []
    for i, colour in enumerate(rng.integers(0, 256, size=(DISTINCT, 3))):
        path = folder / f"{i:03d}.png"
        if not path.exists():
            Image.new("RGB", (256, 256), tuple(int(c) for c in colour)).save(path)
        members.append(Member(path, f"solid{i:03d}"))
    return members


def collections() -> dict[str, list[Member]]:
    built = {f"photos-{seed}": photo_collection(seed) for seed in PHOTO_SEEDS}
    return {**built, "cifar-200": cifar_collection(), "omniglot-200": omniglot_collection(),
            "solid-200": solid_collection()}


def embeddings(model: EmbeddingModel, paths: list[Path]) -> dict[Path, np.ndarray]:
    """The vectors of `paths`, decoded as `simsearch index` decodes them; kept under benchmarks/.cache by model
    and path, so that a re-run embeds only what is new."""
    store = CACHE / "embeddings" / f"dedup-collections-{model.content_hash[:16]}.npz"
    known: dict[Path, np.ndarray] = {}
    if store.exists():
        with np.load(store) as saved:
            known = dict(zip(map(Path, saved["paths"].tolist()), saved["vectors"]))
    missing = sorted({path for path in paths if path not in known})
    if missing:
        known.update(zip(missing, embed(model, missing)))
        store.parent.mkdir(parents=True, exist_ok=True)
        np.savez(store, paths=np.array([str(p) for p in known]), vectors=np.stack(list(known.values())))
    return {path: known[path] for path in paths}


@dataclass(frozen=True)
class Method:
    """A way to group: the vectors of each file (squared L2 on unit vectors), the threshold, and whether
    simsearch's rules (the look-alike check, the pixel rule) apply."""

    name: str
    vectors: dict[Path, np.ndarray]
    threshold: float
    threshold_from: str
    rules: bool
    asked: bool = False
    """With the rules: near-duplicates asked for in a collection of look-alikes too (`--lookalikes`)."""


@dataclass(frozen=True)
class Outcome:
    true_pairs: int
    predicted: int
    hits: int
    groups: int
    false_groups: int
    proposed: int
    lookalike_share: float | None
    exact_only: bool
    seconds: float
    found_by_family: dict[str, tuple[int, int]]
    """For each edit family: (copies grouped with their original, copies)."""


def candidates(members: list[Member]) -> tuple[list[list[Candidate]], list[Path]]:
    """The collection as an index holds it: one row per content (byte-identical files share one), each file a
    `Candidate` with its identity on disk."""
    rows: dict[str, list[Candidate]] = {}
    first: dict[str, Path] = {}
    for number, member in enumerate(members):
        data = member.path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        info = member.path.stat()
        with Image.open(member.path) as image:
            width, height = image.size
        rows.setdefault(digest, []).append(Candidate(str(member.path), width, height, info.st_mtime_ns, number,
                                                    file_id(info), info.st_size, digest))
        first.setdefault(digest, member.path)
    return list(rows.values()), list(first.values())


def photo_signature(_: Candidate) -> PixelSignature:
    """What a method without the pixel rule reads of every image: a photo's signature (the embedding decides)."""
    return PixelSignature(np.zeros((8, 8, 3), np.float32), 100.0, 640, 480)


def run(method: Method, members: list[Member]) -> Outcome:
    owners, files = candidates(members)
    vectors = np.stack([method.vectors[path] for path in files]).astype(np.float32)
    started = time.perf_counter()
    if method.rules:
        found = exact_duplicates(vectors, owners, method.threshold, lookalikes=method.asked)
        groups, share, exact_only = found.groups, found.lookalikes.share, found.lookalikes.exact_only
    else:
        groups = duplicate_groups(vectors, owners, method.threshold, signatures=photo_signature)
        share, exact_only = None, False
    seconds = time.perf_counter() - started
    photo = [member.photo for member in members]
    truth = {(a, b) for a in range(len(members)) for b in range(a + 1, len(members)) if photo[a] == photo[b]}
    predicted: set[tuple[int, int]] = set()
    false_groups = 0
    for group in groups:
        numbers = sorted(int(image.image_id) for image in [group.keeper, *group.others])  # type: ignore[arg-type]
        predicted |= {(a, b) for i, a in enumerate(numbers) for b in numbers[i + 1:]}
        false_groups += len({photo[n] for n in numbers}) > 1
    originals = {member.photo: n for n, member in enumerate(members) if not member.family}
    by_family: dict[str, tuple[int, int]] = {}
    for n, member in enumerate(members):
        if member.family:
            found, total = by_family.get(member.family, (0, 0))
            pair = (min(n, originals[member.photo]), max(n, originals[member.photo]))
            by_family[member.family] = (found + (pair in predicted), total + 1)
    return Outcome(len(truth), len(predicted), len(predicted & truth), len(groups), false_groups,
                   sum(len(group.others) for group in groups), share, exact_only, seconds, by_family)


def phash_vectors(paths: list[Path]) -> dict[Path, np.ndarray]:
    """pHash bits as unit vectors (+-1/8 each): squared L2 between two is their Hamming distance / 16."""
    bits = phash_bits(paths)
    return dict(zip(paths, (2.0 * bits - 1.0) / 8.0))


def validation_threshold(distances: np.ndarray, items: list[neardup_photos.Item]) -> float:
    """The threshold measured as the shipped calibration was: precision 0.999 on the validation split's pairs."""
    threshold, _ = threshold_at_precision(distances, np.array([item.group for item in items]), None)
    return threshold


def raw_backbone() -> EmbeddingModel:
    """The same EfficientNet-Lite0 with GeM pooling and no head: where train_default_photo_model.py starts."""
    return build_model(dataclasses.replace(pretrained_backbone_spec(), name="raw-gem", head="identity",
                                           backbone_options={"pooling": "gem"}))


def methods(paths: list[Path], console: Console) -> list[Method]:
    shipped = load_default_model()
    choice = Collection(None, shipped).threshold_choice()
    shipped_vectors = embeddings(shipped, paths)
    raw = raw_backbone()
    validation = neardup_photos.build(DATASETS, neardup_photos.default_folder("validation"), "validation")
    raw_validation = cached_embeddings(raw, [item.path for item in validation], "validation")
    raw_threshold = validation_threshold(pairwise_distances(raw_validation, raw_validation), validation)
    hash_threshold = validation_threshold(phash_distances([item.path for item in validation]), validation)
    console.print(f"thresholds: shipped {choice.threshold:.4f} ({choice.description}); raw backbone "
                  f"{raw_threshold:.4f}, pHash Hamming {hash_threshold:g} (precision 0.999 on the validation split)")
    return [
        Method(f"shipped model ({shipped.spec.name}), simsearch dedup", shipped_vectors, choice.threshold,
               choice.description, True),
        Method("shipped model, simsearch dedup --lookalikes", shipped_vectors, choice.threshold, choice.description,
               True, asked=True),
        Method("shipped model, embedding only", shipped_vectors, choice.threshold, choice.description, False),
        Method("raw backbone (GeM, no head), simsearch dedup", embeddings(raw, paths), raw_threshold,
               "precision 0.999 on the validation split", True),
        Method("pHash (Hamming), plain groups", phash_vectors(paths), hash_threshold / 16.0,
               f"Hamming {hash_threshold:g}: precision 0.999 on the validation split", False),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    console = Console(width=160)
    built = collections()
    paths = sorted({member.path for members in built.values() for member in members})
    rows = methods(paths, console)
    results: dict[str, dict[str, Outcome]] = {m.name: {name: run(m, members) for name, members in built.items()}
                                              for m in rows}
    photos = [name for name in built if name.startswith("photos-")]
    distinct = [name for name in built if name not in photos]
    sizes = ", ".join(str(len(built[name])) for name in photos)
    table = Table(title=f"dedup out of the box: {len(photos)} photo collections ({sizes} files, test split), pooled; "
                        "proposed pairs in collections without duplicates")
    for column in ("method", "threshold", "pair P", "pair R", "false groups", *[f"{n} pairs" for n in distinct],
                   "look-alike share (photos / " + " / ".join(distinct) + ")"):
        table.add_column(column, justify="left" if column == "method" else "right")
    record = []
    for method in rows:
        found = results[method.name]
        hits = sum(found[n].hits for n in photos)
        predicted = sum(found[n].predicted for n in photos)
        truth = sum(found[n].true_pairs for n in photos)
        precision, recall = hits / max(1, predicted), hits / max(1, truth)
        shares = [found[n].lookalike_share for n in photos + distinct]
        table.add_row(method.name, f"{method.threshold:.4g}", f"{precision:.3f}", f"{recall:.3f}",
                      f"{sum(found[n].false_groups for n in photos)} of {sum(found[n].groups for n in photos)}",
                      *[f"{found[n].predicted}" + (" (exact only)" if found[n].exact_only else "") for n in distinct],
                      "-" if shares[0] is None else " / ".join(f"{s:.2f}" for s in shares))
        record.append({"method": method.name, "threshold": method.threshold, "threshold_from": method.threshold_from,
                       "pair_precision": round(precision, 4), "pair_recall": round(recall, 4),
                       "collections": {name: dataclasses.asdict(outcome) for name, outcome in found.items()}})
    console.print(table)
    for method in rows:
        totals: dict[str, list[int]] = {}
        for name in photos:
            for family, (found, total) in results[method.name][name].found_by_family.items():
                totals.setdefault(family, [0, 0])
                totals[family][0] += found
                totals[family][1] += total
        seconds = sum(outcome.seconds for outcome in results[method.name].values())
        console.print(f"{method.name}: copies grouped with their original, by family: " + ", ".join(
            f"{family} {found}/{total}" for family, (found, total) in sorted(totals.items()))
            + f"; grouping took {seconds:.1f} s in all", soft_wrap=True)
    console.print("goal: pair precision >= 0.98 with recall >= 0.90 on the photos; <= 1 proposed pair per 200 images "
                  "without duplicates")
    if not args.no_record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as handle:
            handle.write(json.dumps({
                "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "benchmark": "dedup-collections-v1",
                "duplicated_share": DUPLICATED, "near_flat": NEAR_FLAT, "photo_seeds": list(PHOTO_SEEDS),
                "files": {name: len(members) for name, members in built.items()}, "cores": os.cpu_count(),
                "shipped_model": load_default_model().content_hash,
                "results": record,
            }) + "\n")


if __name__ == "__main__":
    main()
