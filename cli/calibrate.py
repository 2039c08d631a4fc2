"""`simsearch calibrate DATA`: choose the same/different threshold of a model from labelled data."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from cli.common import (DbOption, IndexOption, err, fail, model_from_argument, out, require_writable_folder,
                        shown_path)
from cli.output import write_json
from retrieval.errors import SimsearchError

if TYPE_CHECKING:
    from retrieval.decisions.calibration import CalibrationResult


def calibrate_command(
    data: Annotated[Path, typer.Argument(help="Folder of class subfolders, or a CSV of pairs (path_a,path_b,same).")],
    criterion: Annotated[str, typer.Option(help="accuracy (best accuracy), eer (equal error rate) or target-fpr.")]
    = "accuracy",
    target_fpr: Annotated[Optional[float], typer.Option(
        help="With it: the largest threshold whose false-positive rate stays at most this (implies target-fpr).")]
    = None,
    negatives: Annotated[Optional[int], typer.Option(
        min=1, help="Different-class pairs to sample from a folder (default: as many as same-class pairs, "
                    "at least 1000).")] = None,
    bootstrap: Annotated[int, typer.Option(min=0, help="Bootstrap resamples for the 95 % intervals.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the pair sample and the bootstrap.")] = 0,
    plot: Annotated[Optional[Path], typer.Option(help="PNG file to write (default: in the index directory).")]
    = None,
    index_dir: IndexOption = None,
    db: DbOption = None,
    model_name: Annotated[Optional[str], typer.Option(
        "--model", help="Model file, `default`, `default-v3` or `pretrained` (default: the index's model, else "
                        "`default`).")]
    = None,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Decode worker processes.")] = None,
    device: Annotated[Optional[str], typer.Option(help="torch device.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Embed DATA, sample same and different pairs, choose the distance threshold, store it in the index for this
    model (never applied to another) with the thresholds at precision levels (for `--precision`), and draw the
    distance histograms and ROC curve."""
    from retrieval.decisions.calibration import CRITERIA
    from retrieval.decisions.calibration_data import calibration_distances
    from retrieval.decisions.calibration_plot import check_plot_path
    from retrieval.decisions.index_calibration import calibrate_and_store, calibration_collection, existing_index

    from cli.progress import RichReporter

    if target_fpr is not None:
        criterion = "target-fpr"
    if criterion not in CRITERIA:
        raise fail(f"--criterion must be one of {', '.join(CRITERIA)} (got {criterion!r})")
    if criterion == "target-fpr" and target_fpr is None:
        raise fail("--criterion target-fpr needs --target-fpr, e.g. --target-fpr 0.01")
    if plot is not None:
        if plot.is_dir():
            raise fail(f"cannot write the plot {plot}: it is a folder")
        try:
            check_plot_path(plot)
        except SimsearchError as exc:
            raise fail(str(exc)) from None
        require_writable_folder(plot)

    try:
        index = existing_index(index_dir, db)
        collection = calibration_collection(index, model_from_argument(model_name) if model_name is not None
                                            else None, device)
        model = collection.model
        with RichReporter(err) as reporter:
            pairs = calibration_distances(data, collection.embedder, negatives=negatives, seed=seed,
                                          workers=workers, reporter=reporter)
        err.print(f"{len(pairs.same)} same pairs, {len(pairs.different)} different pairs")
        run = calibrate_and_store(collection, pairs.same, pairs.different, criterion,  # type: ignore[arg-type]
                                  target_fpr, bootstrap=bootstrap, seed=seed, plot=plot, index_dir=index_dir, db=db)
    except SimsearchError as exc:
        raise fail(str(exc)) from None
    result, plot = run.result, run.plot
    report = result.to_dict()
    if as_json:
        write_json({"model": model.content_hash, "data": str(data), "plot": str(plot), **report})
        return
    table = Table(title=f"calibration of {escape(model.spec.name)} on {escape(shown_path(str(data)))} ({criterion})",
                  title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("95 % interval", justify="right")
    for name in ("threshold", "roc_auc", "accuracy", "tpr", "fpr"):
        interval = getattr(result, f"{name}_interval", None)
        shown = "" if interval is None else f"{interval.low:.4f} - {interval.high:.4f}"
        table.add_row(name.replace("_", " "), f"{getattr(result, name):.4f}", shown)
    out.print(table)
    if result.levels:
        levels = Table(title="thresholds at precision levels (of these pairs)", title_justify="left")
        for column in ("precision", "threshold", "recall"):
            levels.add_column(column, justify="right")
        for level in result.levels:
            levels.add_row(f"{level.precision:g}", f"{level.threshold:.4f}", f"{level.recall:.4f}")
        out.print(levels)
    print_false_pairs(result)
    err.print(f"stored for model {model.content_hash[:12]} in {shown_path(str(run.index_root))}; plot: "
              f"{shown_path(str(plot))}")


def print_false_pairs(result: CalibrationResult) -> None:
    """What the threshold's false-pair rate on these pairs means in collections of a few sizes (dedup says it for
    the collection it looks at)."""
    from retrieval.decisions.false_pairs import COLLECTIONS_SHOWN, expected_false_pairs

    point = next((p for p in result.false_pairs if p.threshold == result.threshold), None)
    if point is None:
        return
    sizes = ", ".join(f"{expected_false_pairs(point.fpr, n):.3g} among {n:,} images" for n in COLLECTIONS_SHOWN)
    out.print(f"false pairs expected at this threshold: {sizes} (a rate of {point.fpr:.2g} of these "
              f"{result.different_pairs:,} different pairs, at most {point.fpr_upper:.2g})", soft_wrap=True)

