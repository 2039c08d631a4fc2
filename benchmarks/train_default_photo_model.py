"""Train the default photo model that ships in the package: a triplet-trained projection head over the frozen
ImageNet EfficientNet-Lite0 backbone.

Data: CIFAR-10 *train* images (the near-duplicate benchmark uses CIFAR-10 test and the shared photos, so nothing
it scores was seen here), each its own class, with kornia views (crop, flip, colour, blur, rotation, JPEG);
features of the views are computed once and cached, then the 1280 -> 128 head is trained with batch-hard
triplet loss, keeping the epoch with the best held-out recall@1.

    python benchmarks/train_default_photo_model.py --images 3000 --views 4 --seed 0

writes retrieval/weights/photo-default.safetensors and, beside it, photo-default.json with this command, the
seed, the data and the validation figures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.progress import Progress

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from retrieval.embedding import Embedder  # noqa: E402
from retrieval.model import PRETRAINED_WEIGHTS, ModelSpec, build_model, load_pretrained_backbone_model  # noqa: E402
from retrieval.training.frozen_backbone import HeadTraining, train_head, view_features  # noqa: E402

DATASETS = Path(os.environ.get("SIMSEARCH_DATASETS", REPO.parent / "shared" / "datasets"))
CACHE = REPO / "benchmarks" / ".cache"
OUT = REPO / "retrieval" / "weights" / "photo-default.safetensors"
MODEL_NAME = "photo-default-v1"


def cifar_train(count: int, seed: int) -> torch.Tensor:
    with zipfile.ZipFile(DATASETS / "cifar10" / "cifar10-train.zip") as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".jpg"))
        chosen = np.random.default_rng(seed).choice(len(names), size=count, replace=False)
        arrays = [np.asarray(Image.open(io.BytesIO(archive.read(names[i]))).convert("RGB")) for i in sorted(chosen)]
    return torch.from_numpy(np.stack(arrays))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--margin", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    console = Console()
    torch.manual_seed(args.seed)

    cache = CACHE / f"photo-head-features-{args.images}-{args.views}-{args.seed}.pt"
    started = time.perf_counter()
    if cache.exists():
        features = torch.load(cache, weights_only=True)
    else:
        images = cifar_train(args.images, args.seed)
        backbone = Embedder(load_pretrained_backbone_model(), torch.device("cpu")).model
        with Progress(console=console) as progress:
            task = progress.add_task("view features", total=len(images))
            features = view_features(backbone, images, args.views, progress=lambda n: progress.advance(task, n))
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(features, cache)
    extract_seconds = time.perf_counter() - started

    config = HeadTraining(out_dim=args.dim, epochs=args.epochs, margin=args.margin, seed=args.seed)
    started = time.perf_counter()
    result = train_head(features, config, on_epoch=lambda e, loss, active, recall: console.print(
        f"epoch {e:3d}  loss {loss:.4f}  active {active:.2f}  validation recall@1 {recall:.4f}"))
    train_seconds = time.perf_counter() - started

    pretrained = load_pretrained_backbone_model()
    spec = ModelSpec(name=MODEL_NAME, backbone="efficientnet-lite0", embedding_dim=args.dim,
                     preprocessing=pretrained.preprocessing, head="linear", backbone_weights=PRETRAINED_WEIGHTS)
    model = build_model(spec)
    model.head.load_state_dict(result.head.state_dict())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model.save(args.out)
    record = {
        "model": MODEL_NAME, "content_hash": model.content_hash,
        "command": f"python benchmarks/train_default_photo_model.py --images {args.images} --views {args.views} "
                   f"--epochs {args.epochs} --dim {args.dim} --margin {args.margin} --seed {args.seed}",
        "data": f"{args.images} CIFAR-10 train images, 1 plain + {args.views} kornia views each",
        "loss": f"triplet, batch-hard mining, margin {args.margin}, 64 images x {args.views + 1} views a batch",
        "best_epoch": result.best_epoch, "validation_recall_at_1": round(result.validation_recall_at_1, 4),
        "feature_seconds": round(extract_seconds), "train_seconds": round(train_seconds),
        "torch": torch.__version__, "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    console.print(record)


if __name__ == "__main__":
    main()
