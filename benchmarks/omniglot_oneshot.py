"""Train the small CNN from scratch on Omniglot's background set and measure one-shot accuracy.

Reports Lake's 20-way within-alphabet one-shot accuracy on the 400 trials of
``all_runs.zip`` plus random 5-way and 20-way 1-shot episodes drawn from the whole
evaluation set, and appends one JSON line to ``benchmarks/results/omniglot.jsonl``.

    python -m benchmarks.omniglot_oneshot --minutes 28 --threads 2
    python -m benchmarks.omniglot_oneshot --compare-losses --minutes 3 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from retrieval.datasets.omniglot import CharacterSet, load_characters, load_lake_runs
from retrieval.evaluation.episodes import episode_accuracy, sample_episodes
from retrieval.evaluation.lake import lake_oneshot_accuracy
from retrieval.evaluation.stats import Estimate
from retrieval.evaluation.types import EmbedFunction
from retrieval.models.encoders.small_cnn import INPUT_SIZE, PIXEL_MEAN, PIXEL_STD, PREPROCESSING, RESAMPLE, SmallCNN
from retrieval.models.model import build_model
from retrieval.models.model_spec import ModelSpec
from retrieval.models.training import Trainer, TrainerConfig, build_objective
from retrieval.models.training.objectives import LOSSES, MININGS
from retrieval.models.training.trainer import Validate
from retrieval.models.training.views import stroke_views

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_FILE = BENCH_DIR / "results" / "omniglot.jsonl"
MODEL_DIR = BENCH_DIR / ".cache"
COMPARED = (
    ("triplet", "random"),
    ("triplet", "semihard"),
    ("triplet", "batchhard"),
    ("contrastive", "-"),
    ("pairwise", "-"),
)
VAL_EPISODES = 200
EVAL_QUERIES_PER_CLASS = 5

Log = Callable[[str], None]


@dataclass(frozen=True)
class RunFigures:
    loss: str
    mining: str
    lake_20way: Estimate
    eval_5way: Estimate
    eval_20way: Estimate
    train_seconds: float
    steps: int
    best_epoch: int
    best_val: float | None


def make_embedder(
    model: nn.Module,
    preprocess: Callable[[Tensor], Tensor],
    batch_size: int = 512,
    device: str = "cpu",
) -> EmbedFunction:
    """A function mapping uint8 images to L2-normalised float embeddings on the CPU, for a module in training (the
    benchmark scores it between epochs, before it is an `EmbeddingModel`).

    The model is put in eval mode (batch-norm running statistics) each time it is called.
    """

    @torch.no_grad()
    def embed(images: Tensor) -> Tensor:
        model.eval()
        chunks = [
            F.normalize(model(preprocess(images[i : i + batch_size].to(device))), dim=1).cpu()
            for i in range(0, images.shape[0], batch_size)
        ]
        return torch.cat(chunks)

    return embed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--minutes", type=float, default=28.0, help="training wall-time budget per model, validation included"
    )
    parser.add_argument("--max-steps", type=int, default=None, help="optional step budget (whichever ends first)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--loss", choices=LOSSES, default="triplet")
    parser.add_argument("--mining", choices=MININGS, default="semihard")
    parser.add_argument("--margin", type=float, default=None, help="default: 0.2 triplet, 1.0 contrastive")
    parser.add_argument("--size", type=int, default=INPUT_SIZE, help="input side S (PIL resize)")
    parser.add_argument("--channels", default="64,64,64,64", help="conv block widths, comma separated")
    parser.add_argument("--embedding-dim", type=int, default=128)
    parser.add_argument("--no-embedding-bn", action="store_true", help="no batch norm after the embedding layer")
    parser.add_argument("--classes-per-batch", type=int, default=32, help="P")
    parser.add_argument("--images-per-class", type=int, default=4, help="K")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--steps-per-epoch", type=int, default=300)
    parser.add_argument("--rotations", action="store_true", help="add 90/180/270 degree rotations as extra classes")
    parser.add_argument("--no-augment", action="store_true", help="turn off random affine distortions")
    parser.add_argument("--degrees", type=float, default=10.0)
    parser.add_argument("--shear", type=float, default=0.3)
    parser.add_argument("--scale", type=float, nargs=2, default=(0.8, 1.2))
    parser.add_argument("--translate", type=float, default=0.1, help="fraction of the image side")
    parser.add_argument("--val-alphabets", type=int, default=3, help="background alphabets held out for validation")
    parser.add_argument("--episodes", type=int, default=400, help="random evaluation episodes per N")
    parser.add_argument("--compare-losses", action="store_true", help="train every loss/miner under --minutes each")
    parser.add_argument("--no-record", action="store_true", help="do not append to the results file")
    parser.add_argument("--no-save", action="store_true", help="do not save the model state dict")
    return parser.parse_args(argv)


def make_preprocess(device: str) -> Callable[[Tensor], Tensor]:
    """uint8 (B, S, S) -> float (B, 1, S, S) as ``(x - PIXEL_MEAN) / PIXEL_STD`` (strokes bright)."""

    def preprocess(images: Tensor) -> Tensor:
        return ((images.to(device).float() - PIXEL_MEAN) / PIXEL_STD).unsqueeze(1)

    return preprocess


def with_rotations(images: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Each class rotated by 90, 180 and 270 degrees becomes a new class."""
    rotated = [torch.rot90(images, k, dims=(1, 2)) for k in range(4)]
    return torch.cat(rotated), torch.cat([labels + k * num_classes for k in range(4)])


def split_alphabets(background: CharacterSet, count: int, seed: int) -> tuple[CharacterSet, CharacterSet | None]:
    if count <= 0:
        return background, None
    rng = np.random.default_rng(seed)
    held = sorted(rng.choice(background.alphabets, size=count, replace=False).tolist())
    kept = [a for a in background.alphabets if a not in held]
    return background.select_alphabets(kept), background.select_alphabets(held)


def make_validator(val_set: CharacterSet, preprocess: Callable[[Tensor], Tensor], args: argparse.Namespace) -> Validate:
    """Mean accuracy of fixed 20-way within-alphabet 1-shot episodes on the held-out alphabets."""
    episodes = sample_episodes(val_set.labels, 20, 1, 1, VAL_EPISODES, seed=args.seed, groups=val_set.alphabet_of_class)

    def validate(model: torch.nn.Module) -> float:
        embed = make_embedder(model, preprocess, device=args.device)
        return episode_accuracy(embed(val_set.images), episodes).mean

    return validate


def train_one(args: argparse.Namespace, loss: str, mining: str, log: Log) -> tuple[SmallCNN, RunFigures]:
    torch.manual_seed(args.seed)
    background = load_characters("background", args.size, RESAMPLE)
    train_set, val_set = split_alphabets(background, args.val_alphabets, args.seed)
    images, labels = train_set.images, train_set.labels
    if args.rotations:
        images, labels = with_rotations(images, labels, train_set.num_classes)
    channels = tuple(int(c) for c in args.channels.split(","))
    model = SmallCNN(1, args.embedding_dim, channels, args.size, embedding_bn=not args.no_embedding_bn)
    preprocess = make_preprocess(args.device)
    validate = None
    if val_set is not None:
        log(f"validation: 20-way within-alphabet 1-shot on held-out {', '.join(val_set.alphabets)}")
        validate = make_validator(val_set, preprocess, args)
    augment = None
    if not args.no_augment:
        augment = stroke_views(args.degrees, args.shear, tuple(args.scale), args.translate)
    config = TrainerConfig(
        classes_per_batch=args.classes_per_batch,
        images_per_class=args.images_per_class,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        max_seconds=args.minutes * 60.0,
        max_steps=args.max_steps,
        steps_per_epoch=args.steps_per_epoch,
        seed=args.seed,
        device=args.device,
    )
    objective = build_objective(loss, args.embedding_dim, mining, args.margin, args.seed)
    result = Trainer(model, objective, images, labels, preprocess, config, augment, validate, log).fit()
    embed = make_embedder(model, preprocess, device=args.device)
    figures = RunFigures(
        loss=loss,
        mining=mining if loss == "triplet" else "-",
        lake_20way=lake_oneshot_accuracy(embed, load_lake_runs(args.size, RESAMPLE)),
        **evaluation_episodes(embed, args),
        train_seconds=result.seconds,
        steps=result.steps,
        best_epoch=result.best_epoch,
        best_val=result.best_score,
    )
    return model, figures


def evaluation_episodes(embed: EmbedFunction, args: argparse.Namespace) -> dict[str, Estimate]:
    evaluation = load_characters("evaluation", args.size, RESAMPLE)
    embeddings = embed(evaluation.images)
    out = {}
    for n_way in (5, 20):
        episodes = sample_episodes(evaluation.labels, n_way, 1, EVAL_QUERIES_PER_CLASS, args.episodes, seed=args.seed)
        out[f"eval_{n_way}way"] = episode_accuracy(embeddings, episodes)
    return out


def print_table(rows: list[RunFigures]) -> None:
    header = (
        f"{'loss':<12}{'mining':<10}{'Lake 20-way':>20}{'eval 5-way':>20}{'eval 20-way':>20}{'train s':>9}{'steps':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.loss:<12}{r.mining:<10}{str(r.lake_20way):>20}{str(r.eval_5way):>20}"
            f"{str(r.eval_20way):>20}{r.train_seconds:>9.0f}{r.steps:>8d}"
        )


def record(args: argparse.Namespace, rows: list[RunFigures]) -> None:
    config = {k: v for k, v in vars(args).items() if k not in ("no_record", "no_save")}
    line = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "benchmark": "omniglot_oneshot",
        "protocol": "train images_background from scratch; Lake all_runs 20-way within-alphabet 1-shot "
        "(query->nearest support, squared L2); evaluation-set episodes N-way 1-shot, "
        f"{EVAL_QUERIES_PER_CLASS} queries/class",
        "config": config,
        "augmentation": "none" if args.no_augment
        else "kornia RandomAffine (retrieval.models.training.views.stroke_views)",
        "machine": {
            "cpu_threads": args.threads,
            "device": args.device,
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "results": [asdict(r) for r in rows],
    }
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS_FILE.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


def save_model(model: SmallCNN, args: argparse.Namespace, loss: str, mining: str, log: Log) -> None:
    """Save as a simsearch model file, so `simsearch eval MODEL .../all_runs.zip` and `simsearch index` take it."""
    prep = dataclasses.replace(PREPROCESSING, size=(args.size, args.size))
    spec = ModelSpec(name=f"omniglot-small-cnn-{loss}-{mining}", backbone="small-cnn", embedding_dim=args.embedding_dim,
                     preprocessing=prep, head="identity",
                     backbone_options={"channels": [int(c) for c in args.channels.split(",")],
                                       "embedding_bn": not args.no_embedding_bn})
    wrapped = build_model(spec)
    wrapped.backbone.load_state_dict(model.state_dict())
    path = MODEL_DIR / f"{spec.name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped.save(path)
    log(f"saved {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)

    def log(message: str) -> None:
        print(message, flush=True)

    started = time.perf_counter()
    runs = [(args.loss, args.mining)] if not args.compare_losses else list(COMPARED)
    rows = []
    for loss, mining in runs:
        log(f"== {loss} {mining} ({args.minutes} min)")
        model, figures = train_one(args, loss, mining, log)
        rows.append(figures)
        if not args.no_save:
            save_model(model, args, loss, figures.mining, log)
    print_table(rows)
    log(f"total wall time {time.perf_counter() - started:.0f} s")
    if not args.no_record:
        record(args, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
