"""What every command shares: the consoles, exit codes, one-line errors, model and path arguments."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from cli.output import terminal_text

if TYPE_CHECKING:
    from retrieval.index import SimilarityIndex
    from retrieval.models.model import EmbeddingModel

# No emoji codes: a file named ":cat:.png" is shown as named, not as a cat.
out = Console(highlight=False, emoji=False)
err = Console(stderr=True, highlight=False, emoji=False)

EXIT_PARTIAL = 1
EXIT_ERROR = 2

IndexOption = Annotated[Optional[Path], typer.Option(
    "--index", help="Index directory (default: $SIMSEARCH_INDEX, else .simsearch/ here or in a parent).")]
DbOption = Annotated[Optional[str], typer.Option(
    "--db", help="Database URL of the index, e.g. postgresql+psycopg://user@host/simsearch (default: $SIMSEARCH_DB, "
                 "else index.db in the index directory).")]


def fail(message: str) -> typer.Exit:
    """Print the one-line error and return the exit (status 2) to raise."""
    print_error(message)
    return typer.Exit(EXIT_ERROR)


class _WarningLines(logging.Handler):
    """The library's warnings (`logging` records under `retrieval`, such as a cache it cannot save) as
    `warning: MESSAGE`, one line of stderr each, as `print_error` shows an error."""

    def emit(self, record: logging.LogRecord) -> None:
        err.print(f"[yellow]warning[/]: {escape(terminal_text(record.getMessage()))}", soft_wrap=True)


logging.getLogger("retrieval").addHandler(_WarningLines(logging.WARNING))


def print_error(message: str) -> None:
    """`error: MESSAGE` on one line of stderr; file names in it are shown as `terminal_text`."""
    err.print(f"[red]error[/]: {escape(terminal_text(message))}", soft_wrap=True)


def exit_for_failures(failed: int, total: int) -> None:
    """Exit 2 when none of `total` inputs could be used (nothing done), 1 when only some failed."""
    if failed:
        raise typer.Exit(EXIT_ERROR if failed == total else EXIT_PARTIAL)


def model_from_argument(value: str) -> "EmbeddingModel":
    """`default` (the shipped photo model), `default-v3` (the previous one), `pretrained` (raw ImageNet backbone
    features) or a model file."""
    from retrieval.models import model as models

    if value == "default":
        return models.load_default_model()
    if value == "default-v3":
        return models.load_v3_model()
    if value == "pretrained":
        return models.load_pretrained_backbone_model()
    return models.load_model(Path(value))


def require_writable_folder(path: Path) -> None:
    """Create the folder that will receive `path` and check it can be written, before any long work."""
    from retrieval.atomic import writable_folder
    from retrieval.errors import OutputWriteError

    try:
        writable_folder(path.parent)
    except OutputWriteError as exc:
        raise fail(f"{exc} (to write {path})") from None


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """"1 file", "2 files"; `nouns` where the plural is not `noun` + "s"."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def shown_path(path: str) -> str:
    """A path for the terminal (`terminal_text`): relative to the working directory when it lies below it, else
    as stored. Not yet markup-escaped for rich."""
    relative = os.path.relpath(path)
    return terminal_text(path if relative.startswith("..") else relative)


def existing_index_dir(index_dir: Optional[Path]) -> Path:
    """The index directory `--index` names, or the one found above the working directory; `fail` where there is
    none."""
    from retrieval.locate import find_index_dir

    root = find_index_dir(index_dir)
    if root is None:
        raise fail("no index found (looked for .simsearch/ here and in parent folders); "
                   "run `simsearch index PATH` first or pass --index")
    return root


def open_existing(index_dir: Optional[Path], db: Optional[str]) -> SimilarityIndex:
    """The index that `--index` / `--db` name (or that is found); `fail` where there is none."""
    from retrieval.index import open_index

    return open_index(existing_index_dir(index_dir), db)

