"""`simsearch export` and `simsearch import`: embeddings out of an index and into one, no image decoded."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cli.common import DbOption, IndexOption, err, fail, plural, shown_path
from retrieval.errors import SimsearchError


def export_command(
    out: Annotated[Path, typer.Argument(help="File to write (parquet), or folder (npy: clip-retrieval's layout; "
                                              "new, empty, or an earlier npy export, which is replaced whole).")],
    layout: Annotated[str, typer.Option("--format", help="parquet (one file, vectors inside) or npy (.npy vector "
                                                         "shards beside parquet metadata).")] = "parquet",
    index_dir: IndexOption = None,
    db: DbOption = None,
) -> None:
    """Write every indexed image's path, metadata and vector, tagged with the model's hash."""
    from retrieval.sources.embedding_files import FORMATS, export_embeddings

    from cli.common import open_existing

    if layout not in FORMATS:
        raise fail(f"--format must be one of {', '.join(FORMATS)} (got {layout!r})")
    if layout == "parquet" and out.is_dir():
        raise fail(f"{out} is a folder: --format parquet writes one file (or use --format npy)")
    try:
        rows, files = export_embeddings(open_existing(index_dir, db), out, layout)
    except SimsearchError as exc:
        raise fail(str(exc)) from None
    err.print(escape(f"exported {plural(rows, 'image')} to {shown_path(str(out))} ({plural(len(files), 'file')})"),
              soft_wrap=True)


def import_command(
    files: Annotated[list[Path], typer.Argument(help="Parquet files or clip-retrieval folders that `export` wrote.")],
    index_dir: IndexOption = None,
    db: DbOption = None,
) -> None:
    """Add images with their vectors, made by the index's own model (its hash is checked), without decoding."""
    from retrieval.sources.embedding_files import import_embeddings

    from cli.common import open_existing

    try:
        rows = import_embeddings(open_existing(index_dir, db), files)
    except SimsearchError as exc:
        raise fail(str(exc)) from None
    err.print(f"imported {plural(rows, 'image')}")
