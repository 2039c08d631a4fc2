"""`simsearch`: index a photo folder, then query it."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from retrieval.errors import InputPathError, SimsearchError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Image similarity search on learned embeddings.")
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

EXIT_PARTIAL = 1
EXIT_ERROR = 2

IndexOption = Annotated[Optional[Path], typer.Option(
    "--index", help="Index directory (default: $SIMSEARCH_INDEX, else .simsearch/ here or in a parent).")]


def fail(message: str) -> typer.Exit:
    err.print(f"[red]error[/]: {escape(message)}", soft_wrap=True)
    return typer.Exit(EXIT_ERROR)


def shown_path(path: str) -> str:
    """A path relative to the working directory when it lies below it, else as stored."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


@app.command("index")
def index_command(
    paths: Annotated[list[Path], typer.Argument(help="Folders or image files to index (recursively).")],
    index_dir: IndexOption = None,
    model_path: Annotated[Optional[Path], typer.Option("--model", help="Model file (default: the index's model, "
                                                       "or the built-in one for a new index).")] = None,
    reembed: Annotated[bool, typer.Option(help="Re-embed every image when --model differs from the index's.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per inference batch.")] = 32,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Decode worker processes (default: cores - 1).")] = None,
    device: Annotated[Optional[str], typer.Option(help="torch device (default: cuda if available, else cpu).")] = None,
    max_pixels: Annotated[int, typer.Option(min=1, help="Refuse images with more pixels (decompression bombs).")]
    = 100_000_000,
) -> None:
    """Add the images under PATHS to the index, or bring it up to date with them."""
    from indexer.pipeline import IndexOptions, index_paths
    from retrieval.index import create_index
    from retrieval.locate import index_dir_for_writing

    from cli.progress import RichReporter

    is_new, root = False, Path()
    try:
        missing = [p for p in paths if not os.path.lexists(p)]
        if missing:
            raise fail(f"no such file or directory: {missing[0]}")
        model = None
        if model_path is not None:
            from retrieval.model import load_model

            model = load_model(model_path)
        root = index_dir_for_writing(index_dir)
        is_new = not root.exists()
        index = create_index(root)
        options = IndexOptions(batch_size=batch_size, workers=workers, device=device, max_pixels=max_pixels,
                               reembed=reembed)
        with RichReporter(err) as reporter:
            summary = index_paths(index, paths, model, options, reporter)
    except SimsearchError as exc:
        if is_new and root.is_dir() and isinstance(exc, InputPathError):
            shutil.rmtree(root)
        raise fail(str(exc)) from None
    rate = f", {summary.embedded / summary.embed_seconds:.1f} images/s" if summary.embed_seconds else ""
    copies = f" ({summary.copies} copies, not re-embedded)" if summary.copies else ""
    reembedded = f", re-embedded {summary.reembedded}" if summary.reembedded else ""
    err.print(f"added {summary.added}{copies}, updated {summary.updated}, moved {summary.moved}, "
              f"removed {summary.removed}, skipped {summary.unchanged} unchanged{reembedded}, failed {summary.failed}"
              f" in {summary.seconds:.1f} s{rate}; index: {shown_path(str(index.root))}", soft_wrap=True)
    if summary.still_failing:
        err.print(f"{summary.still_failing} unchanged files still fail to decode (not retried until they change)")
    if summary.problems:
        raise typer.Exit(EXIT_PARTIAL)


@app.command("query")
def query_command(
    images: Annotated[list[Path], typer.Argument(help="Query images (need not be in the index).")],
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Neighbours per query.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    index_dir: IndexOption = None,
    device: Annotated[Optional[str], typer.Option(help="torch device (default: cuda if available, else cpu).")] = None,
) -> None:
    """Print the K nearest indexed images of each query image."""
    from retrieval.embedding import Embedder, pick_device
    from retrieval.index import open_index
    from retrieval.locate import find_index_dir
    from retrieval.search import query_files

    try:
        root = find_index_dir(index_dir)
        if root is None:
            raise fail("no index found (looked for .simsearch/ here and in parent folders); "
                       "run `simsearch index PATH` first or pass --index")
        index = open_index(root)
        results = query_files(index, Embedder(index.load_model(), pick_device(device)), images, k)
    except SimsearchError as exc:
        raise fail(str(exc)) from None
    if as_json:
        payload = [{"query": r.query, "error": r.error,
                    "neighbours": [{"rank": n.rank, "distance": round(n.distance, 6), "path": n.path,
                                    "label": n.label} for n in r.neighbours]} for r in results]
        sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    for result in results:
        if result.error is not None:
            err.print(f"[red]error[/]: {escape(result.query)}: {escape(result.error)}", soft_wrap=True)
        elif not as_json:
            table = Table(title=escape(shown_path(result.query)), title_justify="left")
            table.add_column("rank", justify="right")
            table.add_column("distance", justify="right")
            table.add_column("path")
            for n in result.neighbours:
                table.add_row(str(n.rank), f"{n.distance:.4f}", escape(shown_path(n.path)))
            out.print(table)
    if any(r.error for r in results):
        raise typer.Exit(EXIT_PARTIAL)


def main() -> None:
    app()
