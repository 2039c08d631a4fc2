"""Finding near-duplicates of real photos, scored only on photos and kinds of edits the model never trained on.

The set (benchmarks/neardup_photos.py): photos at photo resolution from ../shared/datasets/photos, split by photo
(benchmarks/photo_split.py: ImageNet-sample by a hash of the name into train / validation / test, every other
photo source test-only), each with edited copies in families (benchmarks/edit_families.py):

  (a) "trained"   the kornia views the photo models train on (crop, flip, colour, blur, rotation, JPEG)
  (b) the rest    written apart with PIL/numpy, never produced by training: overlays of text and stickers,
                  borders and letterboxing, perspective warps, colour quantisation, occluding patches, chains of
                  rescales and re-encodes, collages, and two or three of them stacked

Every method is scored side by side in one run on the test split (benchmarks/neardup_scores.py for what each
figure means): recall@1 and TPR at FPR 1e-3 on (a) and (b) apart, and dedup precision / recall / F1 over the
whole test set at the threshold the method would decide with: the shipped calibration of a model that carries
one, else the threshold measured the same way on the validation split (the largest distance at which the pairs
of the validation set are grouped with precision 0.999, the level decisions use by default). pHash is scored by Hamming distance. With
`--normalise`, SSCD's score normalisation (against the train split's photos) is measured too.

    python benchmarks/near_duplicates.py                           # the shipped default, the raw backbone, pHash
    python benchmarks/near_duplicates.py --candidate a.safetensors --old-default
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import neardup_photos  # noqa: E402
from edit_families import TRAINED_FAMILIES  # noqa: E402
from neardup_scores import copy_scores, dedup_scores, normalised, pair_distances  # noqa: E402
from photo_split import split_photos  # noqa: E402
from retrieval.datasets.locate import datasets_root  # noqa: E402
from retrieval.decisions.calibration import DEFAULT_PRECISION, level_at, precision_levels  # noqa: E402
from retrieval.errors import CalibrationError  # noqa: E402
from retrieval.models.embedding import Embedder  # noqa: E402
from retrieval.models.model import (EmbeddingModel, load_default_model, load_model,  # noqa: E402
                                    load_pretrained_backbone_model)
from retrieval.sources.decode import Source  # noqa: E402
from retrieval.sources.embed import embed_batches  # noqa: E402
from retrieval.vectors.unit_distance import pairwise_distances  # noqa: E402

DATASETS = datasets_root()
CACHE = REPO / "benchmarks" / ".cache"
RESULTS = REPO / "benchmarks" / "results" / "near_duplicates.jsonl"
OLD_DEFAULT_COMMIT = "062abda"
"""The last commit that shipped photo-default-v2 (the CIFAR-trained head), scored with --old-default."""
PRECISION = DEFAULT_PRECISION


def embed(model: EmbeddingModel, paths: list[Path]) -> np.ndarray:
    """Embeddings of image files, decoded as `simsearch index` decodes them."""
    sources = [Source(i, path=str(p)) for i, p in enumerate(paths)]
    results = [result for batch in embed_batches(Embedder(model), sources, max_pixels=100_000_000) for result in batch]
    failed = [f"{paths[r.key]}: {r.error}" for r in results if r.error is not None]
    if failed:
        sys.exit(f"the benchmark's photos must all decode: {failed[0]}")
    return np.stack([r.vector for r in results])


def cached_embeddings(model: EmbeddingModel, paths: list[Path], name: str) -> np.ndarray:
    """`embed`, kept under benchmarks/.cache by model hash and file list, so a re-run embeds only new models."""
    key = hashlib.sha256((model.content_hash + "\n".join(map(str, paths))).encode()).hexdigest()[:20]
    path = CACHE / "embeddings" / f"{name}-{key}.npy"
    if path.exists():
        return np.load(path)
    vectors = embed(model, paths)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def phash_bits(paths: list[Path]) -> np.ndarray:
    import imagehash
    from PIL import Image

    return np.stack([imagehash.phash(Image.open(p).convert("RGB")).hash.flatten() for p in paths])


def phash_distances(paths: list[Path]) -> np.ndarray:
    bits = phash_bits(paths)
    return (bits[:, None, :] != bits[None, :, :]).sum(axis=2).astype(np.float64)


def old_default_model() -> EmbeddingModel:
    """photo-default-v2 as it shipped, taken from git history into the cache."""
    path = CACHE / "photo-default-v2.safetensors"
    if not path.exists():
        data = subprocess.run(["git", "show", f"{OLD_DEFAULT_COMMIT}:retrieval/weights/photo-default.safetensors"],
                              cwd=REPO, capture_output=True, check=True).stdout
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return load_model(path)


def threshold_at_precision(distances: np.ndarray, groups: np.ndarray, model: EmbeddingModel | None) -> tuple[float, str]:
    """The threshold a method decides with, and where it comes from."""
    calibration = model.calibration if model is not None else None
    if calibration is not None:
        try:
            return level_at(calibration.levels, PRECISION, "the shipped calibration").threshold, "shipped"
        except CalibrationError:
            pass  # it measured no such level: measure it as for the others
    same, different = pair_distances(distances, groups)
    [level] = precision_levels(same, different, (PRECISION,))
    return level.threshold, "validation"


def score(name: str, test: dict[str, np.ndarray], distances: np.ndarray, threshold: float, source: str,
          seconds: float) -> dict[str, object]:
    trained = np.isin(test["family"], TRAINED_FAMILIES)
    a = copy_scores(distances, test["group"], test["original"], trained)
    b = copy_scores(distances, test["group"], test["original"], ~trained)
    families = {family: copy_scores(distances, test["group"], test["original"], test["family"] == family).recall_at_1
                for family in sorted(set(test["family"].tolist()) - {""})}
    dedup = dedup_scores(distances, test["group"], threshold)
    return {"method": name, "a_recall_at_1": a.recall_at_1, "a_tpr": a.tpr_at_fpr, "b_recall_at_1": b.recall_at_1,
            "b_tpr": b.tpr_at_fpr, "dedup_precision": dedup.precision, "dedup_recall": dedup.recall,
            "dedup_f1": dedup.f1, "threshold": threshold, "threshold_from": source,
            "recall_at_1_by_family": families, "seconds": round(seconds)}


def arrays(items: list[neardup_photos.Item]) -> dict[str, np.ndarray]:
    return {"group": np.array([i.group for i in items]), "original": np.array([i.is_original for i in items]),
            "family": np.array([i.family for i in items])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidate", type=Path, action="append", default=[], help="a model file to score too")
    parser.add_argument("--old-default", action="store_true", help="score photo-default-v2 (the last default) too")
    parser.add_argument("--normalise", action="store_true", help="measure SSCD's score normalisation too")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    console = Console()
    started = time.perf_counter()
    validation_items = neardup_photos.build(DATASETS, neardup_photos.default_folder("validation"), "validation")
    test_items = neardup_photos.build(DATASETS, neardup_photos.default_folder("test"), "test")
    validation, test = arrays(validation_items), arrays(test_items)
    console.print(f"test: {test['original'].sum()} photos, {(~test['original']).sum()} copies; validation: "
                  f"{validation['original'].sum()} photos, {(~validation['original']).sum()} copies "
                  f"(built in {time.perf_counter() - started:.0f} s)")
    models: list[tuple[str, Callable[[], EmbeddingModel]]] = [("shipped default", load_default_model),
                                                              ("raw backbone (pretrained)", load_pretrained_backbone_model)]
    if args.old_default:
        models.append(("photo-default-v2 (previous default)", old_default_model))
    models += [(f"candidate {path.name}", lambda path=path: load_model(path)) for path in args.candidate]
    background_paths = split_photos(DATASETS).train if args.normalise else []

    rows = []
    for name, loader in models:
        began = time.perf_counter()
        model = loader()
        v = cached_embeddings(model, [i.path for i in validation_items], "validation")
        t = cached_embeddings(model, [i.path for i in test_items], "test")
        threshold, source = threshold_at_precision(pairwise_distances(v, v), validation["group"], model)
        distances = pairwise_distances(t, t)
        rows.append(score(f"{name}: {model.spec.name}", test, distances, threshold, source,
                          time.perf_counter() - began))
        if args.normalise:
            background = cached_embeddings(model, background_paths, "background")
            v_norm = normalised(pairwise_distances(v, v), pairwise_distances(v, background), beta=1.0)
            threshold, _ = threshold_at_precision(v_norm, validation["group"], None)
            rows.append(score(f"{name}, SSCD-normalised", test,
                              normalised(distances, pairwise_distances(t, background), beta=1.0), threshold, "validation",
                              time.perf_counter() - began))
    began = time.perf_counter()
    v_hash = phash_distances([i.path for i in validation_items])
    threshold, source = threshold_at_precision(v_hash, validation["group"], None)
    rows.append(score("pHash (imagehash, Hamming)", test, phash_distances([i.path for i in test_items]), threshold,
                      source, time.perf_counter() - began))

    table = Table(title=f"near-duplicates of {test['original'].sum()} test photos ({(~test['original']).sum()} "
                        "edited copies); (a) the trained edit family, (b) families never trained on")
    for column in ("method", "(a) R@1", "(a) TPR@1e-3", "(b) R@1", "(b) TPR@1e-3", "dedup P", "dedup R",
                   "dedup F1", "threshold"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in rows:
        table.add_row(str(row["method"]), *(f"{row[k]:.3f}" for k in ("a_recall_at_1", "a_tpr", "b_recall_at_1",
                                                                      "b_tpr", "dedup_precision", "dedup_recall",
                                                                      "dedup_f1")),
                      f"{row['threshold']:.4g} ({row['threshold_from']})")
    console.print(table)
    if not args.no_record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as handle:
            handle.write(json.dumps({
                "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "benchmark": "photos-v1",
                "test_photos": int(test["original"].sum()), "test_copies": int((~test["original"]).sum()),
                "precision_level": PRECISION, "results": rows,
            }) + "\n")


if __name__ == "__main__":
    main()
