"""`simsearch db copy --to URL`: move an index's database to another backend without re-embedding."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from cli.common import DbOption, IndexOption, err, fail, open_existing, plural
from retrieval.errors import SimsearchError

db_app = typer.Typer(add_completion=False, no_args_is_help=True,
                     help="The index's database: copy it to PostgreSQL or back to SQLite.")


@db_app.command("copy")
def copy_command(
    to: Annotated[str, typer.Option("--to", help="URL of the empty database to copy into, e.g. "
                                                  "postgresql+psycopg://user@host/simsearch or sqlite:////path/index.db.")],
    index_dir: IndexOption = None,
    db: DbOption = None,
) -> None:
    """Copy every image, vector, model and calibration of the index into another database (ids kept, nothing
    re-embedded); use it with `--db URL` afterwards. The index directory's model files serve both."""
    from retrieval.index import create_index

    try:
        source = open_existing(index_dir, db)
        target = create_index(source.root, to)
        if target.same_database(source):
            raise fail("--to names the database the index is in already")
        copied = source.copy_into(target)
    except SimsearchError as exc:
        raise fail(str(exc)) from None
    counts = [plural(copied.images, "image"), plural(copied.vectors, "vector"), plural(copied.models, "model"),
              plural(copied.calibrations, "calibration")]
    err.print(escape(f"copied {', '.join(counts[:3])} and {counts[3]} from {source.shown_database} to "
                     f"{target.shown_database}"), soft_wrap=True)
