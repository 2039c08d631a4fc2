"""`simsearch train DATA --out MODEL`: triplet-train an encoder on a labelled (or any) image folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from cli.common import err, fail, require_writable_folder, shown_path
from cli.output import write_json
from retrieval.errors import SimsearchError

EXIT_INTERRUPTED = 130


def train_command(
    data: Annotated[Path, typer.Argument(help="Folder of class subfolders (or any image folder with "
                                              "--self-supervised).")],
    model_out: Annotated[Path, typer.Option("--out", help="Model file to write (safetensors).")],
    self_supervised: Annotated[bool, typer.Option(
        "--self-supervised", help="Ignore folders: each image is its own class, its positives are augmented views.")]
    = False,
    backbone: Annotated[str, typer.Option(help="small-cnn (from scratch) or efficientnet-lite0 (ImageNet).")]
    = "small-cnn",
    trainable_stages: Annotated[int, typer.Option(
        min=0, help="efficientnet-lite0: last backbone stages to fine-tune (0: frozen, head only).")] = 0,
    embedding_dim: Annotated[int, typer.Option(min=2, help="Embedding size.")] = 128,
    loss: Annotated[str, typer.Option(help="triplet, contrastive or pairwise (BCE on sigmoid(w.|h1-h2|+b)).")]
    = "triplet",
    margin: Annotated[Optional[float], typer.Option(help="Margin (default: 0.2 triplet, 1.0 contrastive).")] = None,
    mining: Annotated[str, typer.Option(help="Triplet mining: semihard, batchhard or random.")] = "semihard",
    classes_per_batch: Annotated[int, typer.Option("--classes-per-batch", "-P", min=2, help="P classes a batch.")]
    = 32,
    images_per_class: Annotated[int, typer.Option("--images-per-class", "-K", min=2, help="K images a class.")] = 4,
    epochs: Annotated[int, typer.Option(min=1)] = 20,
    steps_per_epoch: Annotated[int, typer.Option(min=1, help="Batches between validations.")] = 200,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate (warm-up, then cosine decay).")] = 1e-3,
    input_size: Annotated[int, typer.Option(min=16, help="small-cnn: square input side (four 2x poolings).")] = 42,
    colour: Annotated[bool, typer.Option("--colour", help="small-cnn: RGB input instead of grey.")] = False,
    views: Annotated[int, typer.Option(min=1, help="Frozen efficientnet-lite0: augmented views cached per image.")]
    = 4,
    pooling: Annotated[str, typer.Option(help="efficientnet-lite0: pooling of the feature map, mean or gem.")]
    = "mean",
    head_init: Annotated[str, typer.Option(help="Frozen efficientnet-lite0: the head starts random, or as the PCA "
                                                "whitening of the training features.")] = "random",
    validation_fraction: Annotated[float, typer.Option(
        min=0.0, max=0.9, help="Fraction of classes held out to score each epoch and keep the best.")] = 0.2,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Training state file (default: MODEL.checkpoint).")]
    = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the checkpoint.")] = False,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[Optional[str], typer.Option(help="torch device (default: cuda if available, else cpu).")]
    = None,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Decode worker processes.")] = None,
) -> None:
    """Train an embedding model with a metric-learning loss; the epoch with the best validation score is kept."""
    from retrieval.models.embedding import pick_device
    from retrieval.models.model_spec import POOLINGS
    from retrieval.models.training.encoder import BACKBONES, HEAD_INITS, EncoderTraining, new_model, train_encoder
    from retrieval.models.training.objectives import LOSSES, MININGS
    from retrieval.models.training.trainer import EpochRecord, format_record
    from retrieval.sources.labelled import load_labelled_images

    from cli.progress import RichReporter, TrainingProgress

    choices = {"backbone": (backbone, BACKBONES), "loss": (loss, LOSSES), "mining": (mining, MININGS),
               "pooling": (pooling, POOLINGS), "head-init": (head_init, HEAD_INITS)}
    for option, (value, allowed) in choices.items():
        if value not in allowed:
            raise fail(f"--{option} must be one of {', '.join(allowed)} (got {value!r})")
    if margin is not None and margin <= 0:
        raise fail(f"--margin must be positive (got {margin}): without it the embeddings may all collapse together")
    if not data.is_dir():
        raise fail(f"not a folder: {data}")
    checkpoint = checkpoint or model_out.with_name(model_out.name + ".checkpoint")
    if model_out.is_dir():
        raise fail(f"--out {model_out} is a folder: name the model file to write, e.g. "
                   f"{model_out / 'model.safetensors'}")
    if checkpoint.is_dir():
        raise fail(f"--checkpoint {checkpoint} is a folder, not a checkpoint file")
    if resume and not checkpoint.exists():
        raise fail(f"no checkpoint to resume from at {checkpoint}")
    require_writable_folder(model_out)
    require_writable_folder(checkpoint)
    try:
        chosen_device = str(pick_device(device))
    except SimsearchError as exc:
        raise fail(str(exc)) from None
    config = EncoderTraining(
        backbone=backbone, embedding_dim=embedding_dim, trainable_stages=trainable_stages, views=views,  # type: ignore[arg-type]
        pooling=pooling, head_init=head_init,  # type: ignore[arg-type]
        input_size=input_size, colour=colour, loss=loss, mining=mining, margin=margin,  # type: ignore[arg-type]
        classes_per_batch=classes_per_batch, images_per_class=images_per_class, epochs=epochs,
        steps_per_epoch=steps_per_epoch, lr=lr, validation_fraction=validation_fraction,
        self_supervised=self_supervised, seed=seed, device=chosen_device, name=model_out.stem)
    try:
        prep = new_model(config).preprocessing
        with RichReporter(err) as reporter:
            data_set = load_labelled_images(data, prep, self_supervised=self_supervised, workers=workers,
                                            reporter=reporter)
        err.print(f"{len(data_set.labels)} images, {len(data_set.classes)} "
                  f"{'images as classes' if self_supervised else 'classes'}")
        with TrainingProgress(err, epochs * steps_per_epoch) as progress:
            def on_epoch(record: EpochRecord) -> None:
                progress.log(format_record(record))
                progress.validation(record.val_score)

            trained = train_encoder(config, data_set.pixels, data_set.labels, checkpoint=checkpoint, resume=resume,
                                    on_step=progress.step, on_epoch=on_epoch, log=progress.log)
        trained.model.save(model_out)
    except KeyboardInterrupt:
        err.print(f"interrupted; `--resume` continues from the last finished epoch ({checkpoint})")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except SimsearchError as exc:
        raise fail(str(exc)) from None
    result = trained.result
    best = "-" if result.best_score is None else f"{result.best_score:.4f}"
    write_json({
        "model": str(model_out), "content_hash": trained.model.content_hash, "best_epoch": result.best_epoch,
        "validation_recall_at_1": result.best_score, "training_classes": trained.training_classes,
        "validation_classes": trained.validation_classes, "steps": result.steps, "seconds": round(result.seconds, 1),
    })
    err.print(f"wrote {escape(shown_path(str(model_out)))} (best epoch {result.best_epoch}, validation recall@1 {best})")
