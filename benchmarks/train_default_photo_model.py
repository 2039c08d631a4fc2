"""Train the default photo model that ships in the package, with the same code as `simsearch train`.

The equivalent command on a folder of the images would be

    simsearch train FOLDER --self-supervised --backbone efficientnet-lite0 --loss triplet --mining batchhard \\
        --margin 0.2 -P 64 -K 4 --views 3 --epochs 20 --steps-per-epoch 100 --lr 0.003 --validation-fraction 0.1

Data: CIFAR-10 *train* images (the near-duplicate benchmarks use CIFAR-10 test and the shared photos, so nothing
they score was seen here), read straight from the zip and decoded as `simsearch` decodes any file. Each image is
its own class (self-supervised): the frozen ImageNet EfficientNet-Lite0 gives features of the image and of 3
kornia views of it (crop, flip, colour, blur, rotation, JPEG), and the 1280 -> 128 head learns to keep an
image's views together with a batch-hard triplet loss; the epoch with the best held-out recall@1 is kept.

    python benchmarks/train_default_photo_model.py --images 2000 --seed 0

writes retrieval/weights/photo-default.safetensors and, beside it, photo-default.json with this command, the
seed and the validation figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from retrieval.images import Preprocessing, decode_image  # noqa: E402
from retrieval.training.encoder import EncoderTraining, new_model, train_encoder  # noqa: E402
from retrieval.training.trainer import format_record  # noqa: E402

DATASETS = Path(os.environ.get("SIMSEARCH_DATASETS", REPO.parent / "shared" / "datasets"))
OUT = REPO / "retrieval" / "weights" / "photo-default.safetensors"
MODEL_NAME = "photo-default-v2"


def cifar_train(count: int, seed: int, prep: Preprocessing) -> torch.Tensor:
    with zipfile.ZipFile(DATASETS / "cifar10" / "cifar10-train.zip") as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".jpg"))
        chosen = np.random.default_rng(seed).choice(len(names), size=count, replace=False)
        return torch.from_numpy(np.stack([decode_image(archive.read(names[i]), prep).pixels for i in sorted(chosen)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    console = Console()
    config = EncoderTraining(backbone="efficientnet-lite0", embedding_dim=128, views=args.views, loss="triplet",
                             mining="batchhard", margin=0.2, classes_per_batch=64, images_per_class=4,
                             epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, lr=3e-3,
                             validation_fraction=0.1, self_supervised=True, seed=args.seed, name=MODEL_NAME)
    started = time.perf_counter()
    pixels = cifar_train(args.images, args.seed, new_model(config).preprocessing)
    trained = train_encoder(config, pixels, torch.arange(len(pixels)), log=console.print,
                            on_epoch=lambda record: console.print(format_record(record)))
    seconds = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    trained.model.save(args.out)
    record = {
        "model": MODEL_NAME, "content_hash": trained.model.content_hash,
        "command": f"python benchmarks/train_default_photo_model.py --images {args.images} --views {args.views} "
                   f"--epochs {args.epochs} --steps-per-epoch {args.steps_per_epoch} --seed {args.seed}",
        "data": f"{args.images} CIFAR-10 train images, each its own class, 1 plain + {args.views} kornia views",
        "loss": "triplet, batch-hard mining, margin 0.2, 64 images x 4 views a batch",
        "best_epoch": trained.result.best_epoch, "validation_recall_at_1": trained.result.best_score,
        "seconds": round(seconds), "torch": torch.__version__,
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    console.print(record)


if __name__ == "__main__":
    main()
