"""`simsearch verify`, `dedup` and `classify`: same/different decisions at the calibrated threshold, saying which
calibration it came from."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from cli.common import (EXIT_PARTIAL, DbOption, IndexOption, err, exit_for_failures, fail, model_from_argument, out,
                        plural, print_error, shown_path)
from cli.output import terminal_text, write_csv, write_json, write_paths0
from retrieval.errors import SimsearchError
from retrieval.keeper_rules import DEFAULT_RULES

if TYPE_CHECKING:
    from retrieval.collection import Collection, ThresholdChoice
    from retrieval.dedup import DuplicateGroup

EXIT_DIFFERENT = 1

ThresholdOption = Annotated[Optional[float], typer.Option(
    min=0.0, max=4.0, help="Squared-L2 distance threshold (default: the index's calibration of the model, else "
                           "the calibration the model ships with).")]
PrecisionOption = Annotated[Optional[float], typer.Option(
    help="Instead of --threshold: the calibration's threshold at this precision level (one it measured, e.g. "
         "0.999).")]
ModelOption = Annotated[Optional[str], typer.Option(
    "--model", help="Model file, `default` or `pretrained` (default: the index's model).")]
DeviceOption = Annotated[Optional[str], typer.Option(help="torch device (default: cuda if available, else cpu).")]


def open_for_decisions(index_dir: Optional[Path], db: Optional[str], model_name: Optional[str],
                       device: Optional[str]) -> Collection:
    from retrieval.collection import open_collection

    model = model_from_argument(model_name) if model_name is not None else None
    return open_collection(index_dir, model, device, db)


def report_choice(choice: ThresholdChoice) -> None:
    """Say on stderr which calibration the threshold comes from (a given one needs no telling)."""
    if choice.source != "given":
        err.print(escape(terminal_text(f"threshold {choice.threshold:.4f}: {choice.description}")), soft_wrap=True)


def choice_json(choice: ThresholdChoice | None) -> dict[str, object]:
    """The threshold, where it came from and its precision level (all None without a threshold)."""
    return choice.to_dict() if choice is not None else {"threshold": None, "threshold_source": None,
                                                        "precision": None}


def verify_command(
    first: Annotated[Path, typer.Argument(metavar="A", help="An image file.")],
    second: Annotated[Path, typer.Argument(metavar="B", help="Another image file.")],
    threshold: ThresholdOption = None,
    precision: PrecisionOption = None,
    index_dir: IndexOption = None,
    db: DbOption = None,
    model_name: ModelOption = None,
    device: DeviceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Same or different? Exit code 0 for same, 1 for different, 2 for an error."""
    try:
        collection = open_for_decisions(index_dir, db, model_name, device)
        verdict = collection.verify(first, second, threshold, precision)
    except SimsearchError as exc:
        raise fail(str(exc)) from None
    report_choice(verdict.choice)
    if as_json:
        write_json({"a": str(first), "b": str(second), **verdict.to_dict(), "model": collection.model.content_hash})
    else:
        probability = "" if verdict.probability is None else f", pairwise-head probability {verdict.probability:.3f}"
        out.print(f"{'same' if verdict.same else 'different'}: distance {verdict.distance:.4f}, threshold "
                  f"{verdict.threshold:.4f}, margin {verdict.margin:+.4f}{probability}")
    if not verdict.same:
        raise typer.Exit(EXIT_DIFFERENT)


def dedup_command(
    paths: Annotated[Optional[list[Path]], typer.Argument(
        help="Index these first and look for duplicates among them only (default: the whole index).")] = None,
    threshold: ThresholdOption = None,
    precision: PrecisionOption = None,
    index_dir: IndexOption = None,
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the groups as JSON.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print one CSV row per image.")] = False,
    print0: Annotated[bool, typer.Option("--print0", help="Print the non-keepers NUL-separated (for xargs -0).")]
    = False,
    stdin: Annotated[bool, typer.Option("--stdin", help="Read paths from stdin, one a line; write a JSON line "
                                                        "for each, with `duplicate_of` when it matches.")] = False,
    keep: Annotated[str, typer.Option(help="Keeper rules in order: largest, smallest, oldest, newest, "
                                           "shortest-path, longest-path, prefer:DIR, format:EXT.")]
    = DEFAULT_RULES,
    reference: Annotated[Optional[Path], typer.Option(
        help="A protected folder: its images keep and are never proposed; only others are checked against it.")]
    = None,
    device: DeviceOption = None,
) -> None:
    """Near-duplicate groups, each with a suggested keeper (by --keep: most pixels, then oldest, then shortest
    path) and every member within the threshold of it; exact copies are marked apart from near-duplicates, and
    pairs decided "not duplicates" (`simsearch not-duplicates A B`) never group.

    Nothing is ever deleted: `--print0` lists the others so that `xargs -0 rm` stays your explicit choice.
    """
    if sum([as_json, as_csv, print0, stdin]) > 1:
        raise fail("choose one of --json, --csv, --print0 and --stdin")
    try:
        if stdin:
            if paths:
                raise fail("--stdin reads the paths from stdin; give no PATH arguments")
            return stream_duplicates(open_for_decisions(index_dir, db, None, device), threshold, precision)
        unindexed = index_first(paths, index_dir, db, device) if paths else 0
        collection = open_for_decisions(index_dir, db, None, device)
        choice = collection.threshold_choice(threshold, precision)
        found = collection.find_duplicates(choice.threshold, paths or None, keep=keep, reference=reference)
        groups = found.groups
    except SimsearchError as exc:
        raise fail(str(exc)) from None
    report_choice(choice)
    if found.pairs.method != "exact":
        recall = "no pair in the sample" if found.pairs.recall is None else f"pair recall {found.pairs.recall:.3f}"
        err.print(f"pairs from a {found.pairs.neighbours}-nearest-neighbour graph of the approximate index ({recall} "
                  f"against exact search on {found.pairs.sampled:,} sampled images)", soft_wrap=True)
    if print0:
        write_paths0(other.path for group in groups for other in group.others)
    elif as_json:
        write_json([{**choice.to_dict(), **group.to_dict()} for group in groups])
    elif as_csv:
        from retrieval.dedup import csv_rows

        write_csv(csv_rows(groups))
    else:
        print_groups(groups, choice.threshold)
    if unindexed:
        raise typer.Exit(EXIT_PARTIAL)


def index_first(paths: list[Path], index_dir: Optional[Path], db: Optional[str], device: Optional[str]) -> int:
    """Index `paths` into the index; returns how many of their files could not be indexed."""
    from indexer.pipeline import IndexOptions, index_paths
    from retrieval.index import create_index
    from retrieval.locate import index_dir_for_writing

    from cli.progress import RichReporter

    missing = [p for p in paths if not p.exists()]
    if missing:
        raise fail(f"no such file or directory: {missing[0]}")
    index = create_index(index_dir_for_writing(index_dir), db)
    with RichReporter(err) as reporter:
        summary = index_paths(index, paths, None, IndexOptions(device=device), reporter)
    if summary.problems:
        verb = "is" if summary.problems == 1 else "are"
        err.print(f"{plural(summary.problems, 'file')} could not be indexed and {verb} left out")
    return summary.problems


def stream_duplicates(collection: Collection, threshold: Optional[float], precision: Optional[float]) -> None:
    """One JSON line per path read from stdin, as each comes. Lines are read as bytes and decoded as file names
    are (`os.fsdecode`), so that a name that is not UTF-8 is still the path of its file."""
    failed = False
    lines = (os.fsdecode(line.rstrip(b"\n")) for line in sys.stdin.buffer)
    choice = collection.threshold_choice(threshold, precision)
    matches = collection.stream_duplicates((line for line in lines if line.strip()), choice.threshold)
    report_choice(choice)
    for match in matches:
        failed = failed or match.error is not None
        write_json(match.to_dict(), one_line=True)
    if failed:
        raise typer.Exit(EXIT_PARTIAL)


def print_groups(groups: list[DuplicateGroup], threshold: float) -> None:
    if not groups:
        out.print(f"no near-duplicates at threshold {threshold:.4f}")
        return
    table = Table(title=f"{plural(len(groups), 'group')} at threshold {threshold:.4f}", title_justify="left")
    for column in ("group", "role", "distance", "pixels", "path"):
        table.add_column(column, justify="right" if column in ("group", "distance", "pixels") else "left")
    for number, group in enumerate(groups, 1):
        table.add_row(str(number), "keep", "", pixels(group.keeper.width, group.keeper.height),
                      escape(shown_path(group.keeper.path)))
        for other, distance in zip(group.others, group.distances):
            table.add_row("", "duplicate", f"{distance:.4f}", pixels(other.width, other.height),
                          escape(shown_path(other.path)))
    out.print(table)
    duplicates = sum(len(g.others) for g in groups)
    err.print(f"{plural(duplicates, 'duplicate')} in {plural(len(groups), 'group')}; nothing was deleted "
              "(`--print0 | xargs -0 rm` removes the duplicates)")


def pixels(width: int | None, height: int | None) -> str:
    return f"{width}x{height}" if width and height else "?"


def classify_command(
    queries: Annotated[list[Path], typer.Argument(metavar="QUERY...", help="Images to classify.")],
    support: Annotated[Path, typer.Option(help="Folder of class subfolders with one or a few images each.")],
    prototype: Annotated[bool, typer.Option("--prototype", help="Compare with each class's mean embedding "
                                                                "instead of its nearest image.")] = False,
    threshold: ThresholdOption = None,
    precision: PrecisionOption = None,
    index_dir: IndexOption = None,
    db: DbOption = None,
    model_name: ModelOption = None,
    device: DeviceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One-shot (or few-shot) classification: each query gets its nearest support class, or `unknown` beyond
    the threshold (the given one, else the index's or the model's calibration; without any, always the nearest)."""
    from indexer.labelled import support_from_folder
    from retrieval.errors import IndexNotFoundError
    from retrieval.model import load_default_model

    try:
        classes = support_from_folder(support)
        try:
            collection = open_for_decisions(index_dir, db, model_name, device)
        except IndexNotFoundError:
            if index_dir is not None or db is not None:
                raise
            from retrieval.collection import Collection

            collection = Collection(None, load_default_model(), device)
        choice = collection.classify_threshold(threshold, precision)
        results = collection.classify(classes, queries, prototype, None if choice is None else choice.threshold)
    except SimsearchError as exc:
        raise fail(str(exc)) from None
    if choice is None:
        err.print("no calibration for this model and no --threshold: every query gets its nearest class",
                  soft_wrap=True)
    else:
        report_choice(choice)
    if as_json:
        write_json([{**r.to_dict(), **choice_json(choice)} for r in results])
    else:
        table = Table()
        for column in ("query", "class", "distance", "decided by"):
            table.add_column(column, justify="right" if column == "distance" else "left")
        for r in results:
            if r.error is None:
                label = r.label if r.label is not None else f"unknown (nearest: {r.nearest_label})"
                decided = (shown_path(r.nearest_support) if r.nearest_support
                           else terminal_text(f"mean of {r.nearest_label}"))
                table.add_row(escape(shown_path(r.query)), escape(terminal_text(label)), f"{r.distance:.4f}",
                              escape(decided))
        out.print(table)
    for r in results:
        if r.error is not None:
            print_error(r.error)
    exit_for_failures(sum(r.error is not None for r in results), len(results))


def not_duplicates_command(
    first: Annotated[Path, typer.Argument(metavar="A", help="An indexed image.")],
    second: Annotated[Path, typer.Argument(metavar="B", help="Another indexed image.")],
    index_dir: IndexOption = None,
    db: DbOption = None,
) -> None:
    """Record that A and B are not duplicates: by their content, so the decision holds after moves and
    re-indexing, for every later dedup (here and in the server)."""
    try:
        new = open_for_decisions(index_dir, db, None, None).mark_distinct([(first, second)])
    except SimsearchError as exc:
        raise fail(str(exc)) from None
    err.print("recorded: not duplicates" if new else "already recorded: not duplicates")


def keep_command(
    path: Annotated[Path, typer.Argument(help="An indexed image to keep wherever it has duplicates.")],
    index_dir: IndexOption = None,
    db: DbOption = None,
) -> None:
    """Choose this image as the keeper of its duplicate groups: by content, before the keeper rules, for every
    later dedup (here and in the server)."""
    try:
        new = open_for_decisions(index_dir, db, None, None).mark_kept(path)
    except SimsearchError as exc:
        raise fail(str(exc)) from None
    err.print("recorded: keep" if new else "already recorded: keep")


def decisions_command(
    index_dir: IndexOption = None,
    db: DbOption = None,
) -> None:
    """Every decision ("not duplicates", "keep") as JSON: the contents, when, and the paths that hold them now."""
    try:
        collection = open_for_decisions(index_dir, db, None, None)
        write_json(collection.decisions())
    except SimsearchError as exc:
        raise fail(str(exc)) from None

