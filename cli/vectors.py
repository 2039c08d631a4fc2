"""`simsearch info` and `simsearch tune`: what the vector index is, and how it is searched."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from cli.common import DbOption, IndexOption, fail, open_existing, out, shown_path
from cli.output import write_json
from retrieval.errors import SimsearchError


def search_options(index_type: Optional[str], max_memory: Optional[str]) -> dict[str, object]:
    """`simsearch index`'s --index-type and --max-memory as `IndexOptions` fields (left out when not given)."""
    from retrieval.sources.inputs import byte_size_argument

    options: dict[str, object] = {}
    if index_type is not None:
        options["index_type"] = None if index_type.strip().lower() == "auto" else index_type.strip()
    if max_memory is not None:
        options["max_memory"] = None if max_memory.strip().lower() == "none" else byte_size_argument(max_memory)
    return options


def info_command(
    index_dir: IndexOption = None,
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The index: its images, model and database, and its vector index: kind, why, memory, tuning, recall."""
    try:
        index = open_existing(index_dir, db)
        model = index.served_model()
        info = index.vector_info()
        images = index.indexed_count()
        settings = index.search_settings()
    except SimsearchError as exc:
        raise fail(str(exc)) from None
    from retrieval.vectors.faiss_factory import index_bytes

    vectors = None if info is None else {
        **info.to_dict(), "memory_bytes": index_bytes(info.description, info.count, info.dim)}
    report = {"index": str(index.root), "database": index.shown_database, "images": images,
              "model": None if model is None else {"name": model.name, "hash": model.content_hash,
                                                   "dim": model.embedding_dim},
              "settings": {"index_type": settings.index_type, "max_memory": settings.max_memory,
                           "target_recall": settings.recall},
              "vectors": vectors}
    if as_json:
        write_json(report)
        return
    table = Table(title=escape(f"index {shown_path(str(index.root))}"), title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("database", escape(index.shown_database))
    table.add_row("images", f"{images:,}")
    table.add_row("model", "none yet" if model is None else escape(f"{model.name} ({model.content_hash[:12]}, "
                                                                    f"{model.embedding_dim}-d)"))
    if info is not None:
        tuning = info.tuning
        chosen = "given (--index-type)" if info.chosen_by == "given" else f"by {info.chosen_by}"
        table.add_row("vector index", f"{escape(info.description)}, {chosen}, {info.count:,} vectors")
        table.add_row("memory", f"{vectors['memory_bytes'] / 2**20:,.1f} MiB (estimate)")  # type: ignore[index]
        if info.trained_on:
            table.add_row("trained on", f"a random sample of {info.trained_on:,} vectors")
        table.add_row("search", "exact" if tuning.nprobe is None else f"nprobe {tuning.nprobe}")
        table.add_row("recall@10", f"{tuning.recall_at_10:.4f} on {tuning.queries:,} held-out queries (target "
                                   f"{tuning.target_recall:g}), {tuning.ms_per_query:.2f} ms a query batched")
        if settings.max_memory is not None:
            table.add_row("memory allowed", f"{settings.max_memory / 2**20:,.1f} MiB")
    out.print(table)


def tune_command(
    target_recall: Annotated[float, typer.Option(min=0.0, max=1.0, help="Recall@10 to reach.")] = 0.95,
    index_dir: IndexOption = None,
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Measure the vector index again on held-out queries and keep the fastest search that reaches the target
    recall@10 (an exact index always does)."""
    try:
        info = open_existing(index_dir, db).tune(target_recall)
    except SimsearchError as exc:
        raise fail(str(exc)) from None
    tuning = info.tuning
    if as_json:
        write_json(info.to_dict())
        return
    search = "exact search" if tuning.nprobe is None else f"nprobe {tuning.nprobe}"
    out.print(escape(f"{info.description}: {search}, recall@10 {tuning.recall_at_10:.4f} on {tuning.queries:,} "
                     f"queries (target {target_recall:g}), {tuning.ms_per_query:.2f} ms a query"))
    if tuning.recall_at_10 < target_recall:
        out.print("the widest search does not reach the target: a finer index (--index-type) would")
