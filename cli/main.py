"""`simsearch`: index a photo folder, then query it."""

from __future__ import annotations

import atexit
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.markup import escape
from rich.table import Table

from cli.calibrate import calibrate_command
from cli.common import (EXIT_PARTIAL, DbOption, IndexOption, err, exit_for_failures, fail, model_from_argument, out,
                        print_error, shown_path)
from cli.database import db_app
from cli.decide import (classify_command, decisions_command, dedup_command, keep_command, not_duplicates_command,
                        similarity_text, undo_command, verify_command)
from cli.output import fit_path_columns, write_json
from cli.serve import serve_command
from cli.train import train_command
from cli.transfer import export_command, import_command
from cli.vectors import info_command, tune_command
from retrieval.errors import SimsearchError


EXIT_BROKEN_PIPE = 120
"""As Python exits when it cannot flush its standard streams."""

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Image similarity search on learned embeddings.")


@app.command("index")
def index_command(
    paths: Annotated[list[Path], typer.Argument(help="Folders or image files to index (recursively).")],
    index_dir: IndexOption = None,
    db: DbOption = None,
    model_name: Annotated[Optional[str], typer.Option(
        "--model", help="Model file, `default`, `default-v3` or `pretrained` (default: the index's model; `default` "
                        "for a new index).")] = None,
    reembed: Annotated[bool, typer.Option(help="Re-embed every image when --model differs from the index's.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per inference batch.")] = 32,
    workers: Annotated[Optional[int], typer.Option(
        min=0, help="Decode worker processes (default: half the cores; with a GPU, all but one).")] = None,
    device: Annotated[Optional[str], typer.Option(help="torch device (default: cuda if available, else cpu).")] = None,
    max_pixels: Annotated[int, typer.Option(min=1, help="Refuse images with more pixels (decompression bombs).")]
    = 100_000_000,
    index_type: Annotated[Optional[str], typer.Option(
        help="FAISS factory string of the vector index from now on, e.g. IVF4096,Flat or IVF4096,PQ32; `auto`: "
             "chosen by the collection's size again (default: as it was).")] = None,
    max_memory: Annotated[Optional[str], typer.Option(
        help="Memory the vector index may hold, e.g. 2G: compressed codes beyond it; `none`: no limit (default: "
             "as it was).")] = None,
    ray: Annotated[Optional[str], typer.Option(
        "--ray", help="Decode and embed as a Ray job: a cluster's address (as ray.init takes it), or `local` for a "
                      "Ray of this machine.")] = None,
) -> None:
    """Add the images under PATHS to the index, or bring it up to date with them."""
    from indexer.adding import add_paths, check_paths
    from indexer.pipeline import IndexOptions
    from retrieval.report import other_files_text

    from cli.progress import RichReporter
    from cli.vectors import search_options

    from retrieval.models.devices import check_device_name

    try:
        check_paths(paths)
        check_device_name(device)
        model = model_from_argument(model_name) if model_name is not None else None
        options = IndexOptions(batch_size=batch_size, workers=workers, device=device, max_pixels=max_pixels,
                               reembed=reembed, ray=ray, **search_options(index_type, max_memory))
        root, summary = add_paths(paths, index_dir, db, model, options, RichReporter(err))
    except SimsearchError as exc:
        raise fail(str(exc)) from None
    rate = f", {summary.embedded / summary.embed_seconds:.1f} images/s" if summary.embed_seconds else ""
    copies = f" ({summary.copies} copies, not re-embedded)" if summary.copies else ""
    reembedded = f", re-embedded {summary.reembedded}" if summary.reembedded else ""
    err.print(f"added {summary.added}{copies}, updated {summary.updated}, moved {summary.moved}, "
              f"removed {summary.removed}, skipped {summary.unchanged} unchanged{reembedded}, failed {summary.failed}"
              f" in {summary.seconds:.1f} s{rate}; index: {escape(shown_path(str(root)))}", soft_wrap=True)
    if summary.still_failing:
        err.print(f"{summary.still_failing} unchanged files still fail to decode (not retried until they change)")
    if summary.aliases:
        err.print(f"{summary.aliases} other paths (symbolic or hard links) to files indexed once under another path")
    if summary.other_files:
        err.print(other_files_text(summary.other_files), soft_wrap=True)  # extensions are letters and digits
    if summary.problems:
        raise typer.Exit(EXIT_PARTIAL)


@app.command("query")
def query_command(
    images: Annotated[list[Path], typer.Argument(help="Query images (need not be in the index).")],
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Neighbours per query.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    index_dir: IndexOption = None,
    db: DbOption = None,
    device: Annotated[Optional[str], typer.Option(help="torch device (default: cuda if available, else cpu).")] = None,
) -> None:
    """Print the K nearest indexed images of each query image."""
    from retrieval.collection import open_collection

    try:
        results = open_collection(index_dir, None, device, db).query(images, k)
    except SimsearchError as exc:
        raise fail(str(exc)) from None
    if as_json:
        write_json([result.to_dict() for result in results])
    for result in results:
        if result.error is not None:
            print_error(f"{result.query}: {result.error}")
        elif not as_json:
            table = Table(title=escape(shown_path(result.query)), title_justify="left")
            headers = ["rank", "distance", "similarity", "path"]
            for column in headers:
                table.add_column(column, justify="left" if column == "path" else "right", no_wrap=column == "path")
            rows = [[str(n.rank), f"{n.distance:.4f}", similarity_text(n.distance), shown_path(n.path)]
                    for n in result.neighbours]
            for row in fit_path_columns(headers, rows, [3], out.width):
                table.add_row(*row[:3], escape(row[3]))
            out.print(table)
    exit_for_failures(sum(r.error is not None for r in results), len(results))


app.command("train")(train_command)
app.command("verify")(verify_command)
app.command("dedup")(dedup_command)
app.command("undo")(undo_command)
app.command("not-duplicates")(not_duplicates_command)
app.command("keep")(keep_command)
app.command("decisions")(decisions_command)
app.command("classify")(classify_command)
app.command("calibrate")(calibrate_command)
app.add_typer(db_app, name="db")
app.command("info")(info_command)
app.command("tune")(tune_command)
app.command("export")(export_command)
app.command("import")(import_command)
app.command("serve")(serve_command)


@app.command("eval")
def eval_command(
    model_name: Annotated[str, typer.Argument(metavar="MODEL",
                                              help="Model file, `default`, `default-v3` or `pretrained`.")],
    data: Annotated[Path, typer.Argument(help="Folder of class subfolders, or Lake's one-shot runs (all_runs.zip).")],
    way: Annotated[int, typer.Option(min=2, help="Classes per few-shot episode.")] = 20,
    shot: Annotated[int, typer.Option(min=1, help="Support images per class.")] = 1,
    episodes: Annotated[int, typer.Option(min=1, help="Episodes to draw.")] = 400,
    pairs: Annotated[int, typer.Option(min=1, help="Same and different pairs for ROC AUC.")] = 5000,
    seed: Annotated[int, typer.Option(help="Seed of episodes and pairs.")] = 0,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Decode worker processes.")] = None,
    device: Annotated[Optional[str], typer.Option(help="torch device.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Score MODEL on DATA: N-way K-shot accuracy, verification ROC AUC, recall@k, precision@1, MAP@R; or, on
    Lake's all_runs.zip, the 20-way within-alphabet one-shot accuracy of its 400 trials."""
    from retrieval.datasets.omniglot import is_lake_runs_zip
    from retrieval.models.embedding import Embedder, pick_device
    from retrieval.sources.labelled import evaluate_labelled_folder

    from cli.progress import RichReporter

    try:
        if data.is_file() and is_lake_runs_zip(data):
            return lake_eval(model_name, data, device, as_json)
        if not data.is_dir():
            raise fail(f"not a folder of class subfolders nor a Lake all_runs.zip: {data}")
        embedder = Embedder(model_from_argument(model_name), pick_device(device))
        found, report = evaluate_labelled_folder(embedder, data, way=way, shot=shot, episodes=episodes, pairs=pairs,
                                                 seed=seed, workers=workers, progress=RichReporter(err))
    except SimsearchError as exc:
        raise fail(str(exc)) from None
    figures = {
        f"{report.way}-way {report.shot}-shot accuracy": (report.episodes.mean, report.episodes.ci95),
        "verification ROC AUC": (report.verification_auc, None),
        **{f"recall@{k}": (v, None) for k, v in report.retrieval.recall_at.items()},
        "precision@1": (report.retrieval.precision_at_1, None),
        "MAP@R": (report.retrieval.map_at_r, None),
    }
    if as_json:
        write_json({
            "model": embedder.content_hash, "data": str(data), "images": len(found.labels),
            "classes": len(found.classes), "episodes": report.episodes.n, "pairs": report.pairs, "seed": seed,
            "figures": {name: {"value": value, "ci95": ci} for name, (value, ci) in figures.items()},
        })
        return
    table = Table(title=f"{escape(shown_path(str(data)))}: {len(found.labels)} images, {len(found.classes)} classes")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, (value, ci) in figures.items():
        table.add_row(name, f"{value:.4f}" + (f" ± {ci:.4f} (95 %)" if ci is not None else ""))
    out.print(table)


def lake_eval(model_name: str, runs_zip: Path, device: Optional[str], as_json: bool) -> None:
    """Print the accuracy of MODEL on Lake et al.'s one-shot runs (`retrieval.evaluation.lake_runs`)."""
    from retrieval.evaluation.lake_runs import lake_runs_accuracy
    from retrieval.models.embedding import Embedder, pick_device

    embedder = Embedder(model_from_argument(model_name), pick_device(device))
    accuracy = lake_runs_accuracy(embedder, runs_zip)
    name = f"Lake 20-way within-alphabet one-shot accuracy ({accuracy.n} trials)"
    if as_json:
        write_json({"model": embedder.content_hash, "data": str(runs_zip), "trials": accuracy.n,
                    "figures": {name: {"value": accuracy.mean, "ci95": accuracy.ci95}}})
        return
    out.print(f"{escape(name)}: {accuracy.mean:.4f} ± {accuracy.ci95:.4f} (95 %)")


def main() -> NoReturn:
    """Run the command, then leave without tearing the interpreter down.

    Python's teardown frees every object one at a time; with torch imported that costs most of a second
    (0.8-1.1 s of the 2.9 s that `python -c "import torch"` takes on the benchmark machines), longer than a
    re-index of an unchanged folder. The exit handlers still run, then both streams are flushed.
    """
    # Pillow warns about a file's metadata (a corrupt EXIF block) on stderr, two lines naming its own source; what
    # a user must know of a bad file, simsearch reports itself.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
    try:
        app()
        code: int | str | None = 0
    except SystemExit as exc:
        code = exc.code
    if isinstance(code, str):
        sys.stderr.write(code + "\n")
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            code = code or EXIT_BROKEN_PIPE
    os._exit(code or 0)
