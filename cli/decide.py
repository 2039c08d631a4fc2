"""`simsearch verify`, `dedup` and `classify`: same/different decisions at the calibrated threshold, saying which
calibration it came from."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from cli.common import (EXIT_PARTIAL, DbOption, IndexOption, err, exit_for_failures, fail, model_from_argument, out,
                        plural, print_error, shown_path)
from cli.output import fit_path_columns, terminal_text, write_csv, write_json, write_paths0
from retrieval.decisions.keeper_rules import DEFAULT_RULES
from retrieval.errors import SimsearchError
from retrieval.sources.shards import is_shard

if TYPE_CHECKING:
    from retrieval.collection import Collection, ThresholdChoice
    from retrieval.decisions.dedup import DuplicateGroup
    from retrieval.decisions.moves import MoveReport, UndoReport
    from retrieval.index import SimilarityIndex

EXIT_DIFFERENT = 1

ThresholdOption = Annotated[Optional[float], typer.Option(
    min=0.0, max=4.0, help="Squared-L2 distance threshold (default: the index's calibration of the model, else "
                           "the calibration the model ships with).")]
PrecisionOption = Annotated[Optional[float], typer.Option(
    help="Instead of --threshold: the calibration's threshold at this precision level (one it measured, e.g. "
         "0.999).")]
SimilarityOption = Annotated[Optional[float], typer.Option(
    min=-1.0, max=1.0, help="Instead of --threshold: the cosine similarity at or above which two images are the "
                            "same, e.g. 0.9 (the threshold 2 - 2 x similarity: 0.9 is distance 0.2).")]
ModelOption = Annotated[Optional[str], typer.Option(
    "--model", help="Model file, `default`, `default-v3` or `pretrained` (default: the index's model).")]
DeviceOption = Annotated[Optional[str], typer.Option(help="torch device (default: cuda if available, else cpu).")]


def open_for_decisions(index_dir: Optional[Path], db: Optional[str], model_name: Optional[str],
                       device: Optional[str]) -> Collection:
    from retrieval.collection import open_collection

    model = model_from_argument(model_name) if model_name is not None else None
    return open_collection(index_dir, model, device, db)


def given_threshold(threshold: Optional[float], similarity: Optional[float], precision: Optional[float]
                    ) -> Optional[float]:
    """The threshold asked for as `--threshold` or `--similarity` (converted by `threshold_for_similarity`), or
    None; `fail` when more than one of the three is given."""
    if sum(value is not None for value in (threshold, similarity, precision)) > 1:
        raise fail("give one of --threshold, --similarity and --precision")
    if similarity is None:
        return threshold
    from retrieval.vectors.unit_distance import threshold_for_similarity

    try:
        return threshold_for_similarity(similarity)
    except SimsearchError as exc:  # NaN passes typer's bounds
        raise fail(str(exc)) from None


def distance_text(distance: float) -> str:
    """A distance for a person: squared L2, and the cosine similarity beside it."""
    return f"{distance:.4f} (similarity {similarity_text(distance)})"


def similarity_text(distance: float) -> str:
    """The cosine similarity at `distance`, as tables show it (numpy, as every conversion, only when needed)."""
    from retrieval.vectors.unit_distance import cosine_similarity

    return f"{cosine_similarity(distance):.4f}"


def json_similarity(distance: float) -> float:
    """The cosine similarity at `distance`, rounded as JSON and CSV distances are."""
    from retrieval.vectors.unit_distance import json_similarity as rounded

    return rounded(distance)


def report_choice(choice: ThresholdChoice) -> None:
    """Say on stderr which calibration the threshold comes from (a given one needs no telling)."""
    if choice.source != "given":
        err.print(escape(terminal_text(f"threshold {distance_text(choice.threshold)}: {choice.description}")),
                  soft_wrap=True)


def report_false_pairs(choice: ThresholdChoice, images: int) -> None:
    """Say on stderr how many false pairs the threshold means among these `images` distinct images, and warn
    when they are too many for it (where the model's or the index's calibration measured its false-pair rate)."""
    found = choice.in_collection(images)
    if found is None:
        return
    err.print(escape(terminal_text(found.message())), soft_wrap=True)
    warning = found.warning()
    if warning is not None:
        err.print(f"[yellow]warning[/]: {escape(terminal_text(warning))}", soft_wrap=True)


def choice_json(choice: ThresholdChoice | None) -> dict[str, object]:
    """The threshold, where it came from and its precision level (all None without a threshold)."""
    return choice.to_dict() if choice is not None else {"threshold": None, "threshold_source": None,
                                                        "precision": None}


def with_similarity(value: object) -> object:
    """A decision's JSON with the cosine similarity beside each distance (`retrieval.vectors.unit_distance`, as the
    server answers)."""
    from retrieval.vectors.unit_distance import with_similarity as beside

    return beside(value)


def csv_with_similarity(rows: Iterable[list[object]]) -> Iterator[list[object]]:
    """CSV rows (a header first) with a `similarity` column after `distance`."""
    column = None
    for row in rows:
        if column is None:
            column = row.index("distance") + 1
            yield [*row[:column], "similarity", *row[column:]]
            continue
        distance = row[column - 1]
        similarity = json_similarity(distance) if isinstance(distance, float) else ""
        yield [*row[:column], similarity, *row[column:]]


def verify_command(
    first: Annotated[Path, typer.Argument(metavar="A", help="An image file.")],
    second: Annotated[Path, typer.Argument(metavar="B", help="Another image file.")],
    threshold: ThresholdOption = None,
    similarity: SimilarityOption = None,
    precision: PrecisionOption = None,
    index_dir: IndexOption = None,
    db: DbOption = None,
    model_name: ModelOption = None,
    device: DeviceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Same or different? Exit code 0 for same, 1 for different, 2 for an error."""
    limit = given_threshold(threshold, similarity, precision)
    try:
        collection = open_for_decisions(index_dir, db, model_name, device)
        verdict = collection.verify(first, second, limit, precision)
    except SimsearchError as exc:
        raise fail(str(exc)) from None
    report_choice(verdict.choice)
    if as_json:
        write_json(with_similarity({"a": str(first), "b": str(second), **verdict.to_dict(),
                                    "model": collection.model.content_hash}))
    else:
        probability = "" if verdict.probability is None else f", pairwise-head probability {verdict.probability:.3f}"
        pixels = "" if verdict.pixels is None else f"; {verdict.pixels.describe()}"
        out.print(f"{'same' if verdict.same else 'different'}: distance {distance_text(verdict.distance)}, "
                  f"threshold {distance_text(verdict.threshold)}, margin {verdict.margin:+.4f}{probability}{pixels}",
                  soft_wrap=True)
    if not verdict.same:
        raise typer.Exit(EXIT_DIFFERENT)


def dedup_command(
    paths: Annotated[Optional[list[Path]], typer.Argument(
        help="Index these first and look for duplicates among them only (default: the whole index).")] = None,
    threshold: ThresholdOption = None,
    similarity: SimilarityOption = None,
    precision: PrecisionOption = None,
    index_dir: IndexOption = None,
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the groups as JSON.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print one CSV row per image.")] = False,
    print0: Annotated[bool, typer.Option("--print0", help="Print the non-keepers NUL-separated (for xargs -0).")]
    = False,
    stdin: Annotated[bool, typer.Option("--stdin", help="Read paths from stdin, one a line; write a JSON line "
                                                        "for each, with `duplicate_of` when it matches.")] = False,
    move_to: Annotated[Optional[Path], typer.Option(
        "--move-to", metavar="DIR", help="Move the non-keepers (what --print0 lists) under DIR, at their path "
                                         "relative to the folder given (else the one holding the whole index), "
                                         "never overwriting; recorded in DIR/simsearch-moves.jsonl for "
                                         "`simsearch undo`.")] = None,
    trash: Annotated[bool, typer.Option(
        "--trash", help="Send the non-keepers to the desktop's trash, recorded in the index directory's "
                        "trash-moves.jsonl for `simsearch undo` (which restores them where the trash can be "
                        "read, a freedesktop trash; elsewhere restore them from the trash).")] = False,
    keep: Annotated[str, typer.Option(help="Keeper rules in order: largest, smallest, oldest, newest, "
                                           "shortest-path, longest-path, prefer:DIR, format:EXT.")]
    = DEFAULT_RULES,
    reference: Annotated[Optional[Path], typer.Option(
        help="A protected folder: its images keep and are never proposed; only others are checked against it.")]
    = None,
    lookalikes: Annotated[bool, typer.Option(
        "--lookalikes", help="Propose near-duplicates even in a collection of look-alikes (most images within the "
                             "threshold of their nearest neighbour), where by default only exact copies are.")]
    = False,
    device: DeviceOption = None,
    manifest: Annotated[Optional[Path], typer.Option(
        "--manifest", metavar="OUT", help="Shards in (WebDataset .tar, .parquet with image bytes), a manifest out "
                                          "(.parquet, .jsonl or .csv): one row a sample, `keep` for the next step "
                                          "(docs/pipelines.md). With it, --index DIR keeps the samples' vectors in "
                                          "DIR for later runs.")] = None,
    image_column: Annotated[str, typer.Option(help="A parquet shard's column of image bytes (img2dataset's).")]
    = "jpg",
    key_column: Annotated[str, typer.Option(help="A parquet shard's key column (img2dataset's).")] = "key",
    against: Annotated[Optional[Path], typer.Option(
        "--against", metavar="DIR", help="With --manifest: compare the shards with the samples kept in DIR (by an "
                                         "earlier --index DIR) without adding them.")] = None,
) -> None:
    """Near-duplicate groups, each with a suggested keeper (by --keep: most pixels, then oldest, then shortest
    path) and every member within the threshold of it; exact copies are marked apart from near-duplicates, and
    pairs decided "not duplicates" (`simsearch not-duplicates A B`) never group.

    Nothing is ever deleted. `--move-to DIR` or `--trash` moves the others away, each checked just before (still
    the file indexed, its keeper still there) and recorded, so that `simsearch undo MANIFEST` puts them back;
    `--print0` lists them for scripts.

    Given WebDataset shards or parquet files of image bytes and `--manifest OUT`, it reads their samples instead
    (nothing unpacked) and writes one row a sample, `keep` for the next step of a pipeline (docs/pipelines.md).
    """
    if manifest is not None or against is not None or (paths and any(is_shard(path) for path in paths)):
        if manifest is None or not paths or not all(is_shard(path) for path in paths):
            raise fail("shards (.tar, .parquet) and --manifest OUT go together: give both, and only shards")
        if as_json or as_csv or print0 or stdin or move_to or trash or reference or db or keep != DEFAULT_RULES:
            raise fail("--manifest writes the decisions: give no --json, --csv, --print0, --stdin, --move-to, "
                       "--trash, --reference, --db or --keep")
        from cli.shards import dedup_shards_command

        return dedup_shards_command(paths, manifest, image_column, key_column, index_dir, against,
                                    given_threshold(threshold, similarity, precision), precision, lookalikes, device)
    if sum([as_json, as_csv, print0, stdin]) > 1:
        raise fail("choose one of --json, --csv, --print0 and --stdin")
    if move_to is not None and trash:
        raise fail("choose one of --move-to and --trash")
    acting = move_to is not None or trash
    if acting and (as_json or as_csv or print0 or stdin):
        raise fail("--move-to and --trash show the groups as a table, then move them: give no --json, --csv, "
                   "--print0 or --stdin")
    limit = given_threshold(threshold, similarity, precision)
    try:
        if stdin:
            if paths:
                raise fail("--stdin reads the paths from stdin; give no PATH arguments")
            if lookalikes:
                raise fail("--stdin compares each path as it comes, in no collection: --lookalikes does not apply")
            return stream_duplicates(open_for_decisions(index_dir, db, None, device), limit, precision)
        unindexed = index_first(paths, index_dir, db, device) if paths else 0
        collection = open_for_decisions(index_dir, db, None, device)
        choice = collection.threshold_choice(limit, precision)
        found = collection.find_duplicates(choice.threshold, paths or None, keep=keep, reference=reference,
                                           lookalikes=lookalikes)
        groups = found.groups
    except SimsearchError as exc:
        raise fail(str(exc)) from None
    report_choice(choice)
    if not found.lookalikes.exact_only:
        report_false_pairs(choice, found.lookalikes.images)
    if found.lookalikes.lookalikes:
        err.print(f"[yellow]warning[/]: {escape(found.lookalikes.message())}", soft_wrap=True)
    if found.pairs.method != "exact":
        recall = "no pair in the sample" if found.pairs.recall is None else f"pair recall {found.pairs.recall:.3f}"
        how = (f"pairs from a {found.pairs.neighbours}-nearest-neighbour graph of the approximate index"
               if found.pairs.method == "knn-graph" else f"pairs searched in {plural(found.pairs.cells or 0, 'cell')}, each image "
               f"also in those of its {found.pairs.neighbours} next nearest whose border lies near it")
        err.print(f"{how} ({recall} against exact search on {found.pairs.sampled:,} sampled images)", soft_wrap=True)
    if print0:
        write_paths0(other.path for group in groups for other in group.others)
    elif as_json:
        write_json(with_similarity([{**choice.to_dict(), **group.to_dict()} for group in groups]))
    elif as_csv:
        from retrieval.decisions.dedup import csv_rows

        write_csv(csv_with_similarity(csv_rows(groups)))
    else:
        print_groups(groups, choice.threshold, acting)
    refused = act_on_groups(collection, groups, move_to, trash, paths) if acting and groups else 0
    if unindexed or refused:
        raise typer.Exit(EXIT_PARTIAL)


def act_on_groups(collection: Collection, groups: list[DuplicateGroup], move_to: Optional[Path], trash: bool,
                  paths: Optional[list[Path]]) -> int:
    """Move (or trash) every group's others and say what was done; how many were refused."""
    from retrieval.decisions.moves import move_duplicates, trash_duplicates

    assert collection.index is not None
    try:
        if move_to is not None:
            roots = [os.path.abspath(path.expanduser()) for path in paths] if paths else None
            report = move_duplicates(collection.index, groups, move_to.expanduser(), roots)
        else:
            report = trash_duplicates(collection.index, groups)
    except SimsearchError as exc:
        raise fail(str(exc)) from None
    report_moves(report, "moved" if move_to is not None else "trashed")
    return len(report.refused)


def report_moves(report: MoveReport, verb: str) -> None:
    """One line for each file not moved, then what was done and how to undo it (stderr)."""
    for refusal in report.refused:
        err.print(escape(f"not {verb}: {shown_path(refusal.path)}: {terminal_text(refusal.reason)}"), soft_wrap=True)
    copies = sum(record.copy for record in report.moved)
    where = "to the trash" if verb == "trashed" else f"under {shown_path(str(report.manifest.parent))}"
    err.print(escape(f"{verb} {plural(len(report.moved), 'file')} ({plural(copies, 'exact copy', 'exact copies')}) "
                     f"{where}; they left the index. To put them back: "
                     f"simsearch undo {shown_path(str(report.manifest))}"), soft_wrap=True)
    if report.unlocated:
        err.print(f"{plural(report.unlocated, 'file')} went where send2trash does not say: undo leaves "
                  f"{'it' if report.unlocated == 1 else 'them'} to the desktop's trash", soft_wrap=True)
    if report.target_under is not None:
        err.print(escape(f"note: {shown_path(str(report.manifest.parent))} lies in {shown_path(report.target_under)}, "
                         "which `simsearch index` scans: indexing it again would bring the moved files back into "
                         "the index (a hidden folder, .NAME, is skipped)"), soft_wrap=True)


def index_first(paths: list[Path], index_dir: Optional[Path], db: Optional[str], device: Optional[str]) -> int:
    """Index `paths` into the index (`indexer.adding.add_paths`); returns how many of their files could not be
    indexed."""
    from indexer.adding import add_paths
    from indexer.pipeline import IndexOptions

    from cli.progress import RichReporter

    _, summary = add_paths(paths, index_dir, db, None, IndexOptions(device=device), RichReporter(err))
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
        write_json(with_similarity(match.to_dict()), one_line=True)
    if failed:
        raise typer.Exit(EXIT_PARTIAL)


def print_groups(groups: list[DuplicateGroup], threshold: float, acting: bool = False) -> None:
    if not groups:
        out.print(f"no near-duplicates at threshold {distance_text(threshold)}")
        return
    headers = ["group", "role", "distance", "similarity", "pixels", "path"]
    rows = []
    for number, group in enumerate(groups, 1):
        rows.append([str(number), "keep", "", "", pixels(group.keeper.width, group.keeper.height),
                     shown_path(group.keeper.path)])
        for other, distance, copy in zip(group.others, group.distances, group.copies):
            rows.append(["", "copy" if copy else "duplicate", f"{distance:.4f}", similarity_text(distance),
                         pixels(other.width, other.height), shown_path(other.path)])
    table = Table(title=f"{plural(len(groups), 'group')} at threshold {distance_text(threshold)}",
                  title_justify="left")
    for column in headers:
        numeric = column in ("group", "distance", "similarity", "pixels")
        table.add_column(column, justify="right" if numeric else "left", no_wrap=column == "path")
    for row in fit_path_columns(headers, rows, [headers.index("path")], out.width):
        table.add_row(*row[:-1], escape(row[-1]))
    out.print(table)
    duplicates = sum(len(g.others) for g in groups)
    copies = sum(sum(g.copies) for g in groups)
    if not acting:
        err.print(f"{plural(duplicates, 'duplicate')} ({plural(copies, 'exact copy', 'exact copies')}) in "
                  f"{plural(len(groups), 'group')}; "
                  "nothing was moved (`--move-to DIR` or `--trash` moves them, `simsearch undo` puts them back; "
                  "`--print0` lists them for scripts)", soft_wrap=True)


def pixels(width: int | None, height: int | None) -> str:
    return f"{width}x{height}" if width and height else "?"


def classify_command(
    queries: Annotated[list[Path], typer.Argument(metavar="QUERY...", help="Images to classify.")],
    support: Annotated[Path, typer.Option(help="Folder of class subfolders with one or a few images each.")],
    prototype: Annotated[bool, typer.Option("--prototype", help="Compare with each class's mean embedding "
                                                                "instead of its nearest image.")] = False,
    threshold: ThresholdOption = None,
    similarity: SimilarityOption = None,
    precision: PrecisionOption = None,
    index_dir: IndexOption = None,
    db: DbOption = None,
    model_name: ModelOption = None,
    device: DeviceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One-shot (or few-shot) classification: each query gets its nearest support class, or `unknown` beyond
    the threshold (the given one, else the index's or the model's calibration; without any, always the nearest)."""
    from retrieval.collection import open_for_classify
    from retrieval.sources.labelled import support_from_folder

    limit = given_threshold(threshold, similarity, precision)
    try:
        classes = support_from_folder(support)
        model = model_from_argument(model_name) if model_name is not None else None
        collection = open_for_classify(index_dir, model, device, db)
        choice = collection.classify_threshold(limit, precision)
        results = collection.classify(classes, queries, prototype, None if choice is None else choice.threshold)
    except SimsearchError as exc:
        raise fail(str(exc)) from None
    if choice is None:
        err.print("no calibration for this model and no --threshold: every query gets its nearest class",
                  soft_wrap=True)
    else:
        report_choice(choice)
    if as_json:
        write_json(with_similarity([{**r.to_dict(), **choice_json(choice)} for r in results]))
    else:
        headers = ["query", "class", "distance", "similarity", "decided by"]
        rows = []
        for r in results:
            if r.error is None:
                label = r.label if r.label is not None else f"unknown (nearest: {r.nearest_label}" + (
                    ", pixels differ)" if r.pixels is not None else ")")
                decided = (shown_path(r.nearest_support) if r.nearest_support
                           else terminal_text(f"mean of {r.nearest_label}"))
                rows.append([shown_path(r.query), terminal_text(label), f"{r.distance:.4f}",
                             similarity_text(r.distance), decided])
        table = Table()
        for column in headers:
            table.add_column(column, justify="right" if column in ("distance", "similarity") else "left",
                             no_wrap=column in ("query", "decided by"))
        for row in fit_path_columns(headers, rows, [0, 4], out.width):
            table.add_row(*(escape(cell) for cell in row))
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



REINDEX_CHUNK = 200
"""Restored files indexed again per `add_to_index` call: each is a root of its scan, looked up in the database."""


def undo_command(
    manifest: Annotated[Path, typer.Argument(
        metavar="MANIFEST", help="What `dedup --move-to DIR` wrote (DIR/simsearch-moves.jsonl), or `dedup --trash` "
                                 "(trash-moves.jsonl in the index directory).")],
    index_dir: IndexOption = None,
    db: DbOption = None,
    device: DeviceOption = None,
) -> None:
    """Put every file that `dedup --move-to` or `--trash` moved back where it was, and back in the index.

    Never overwrites: a file whose place holds a file again stays where it was moved, one line says so. Running
    it again is harmless: it finds everything back already. Files sent to a trash that send2trash could not say
    where (macOS, Windows) are restored from the desktop's trash. Exit code 1 when some could not be restored.
    """
    from retrieval.decisions.moves import read_manifest, undo_moves

    if not manifest.is_file():
        raise fail(f"no such manifest: {manifest}")
    try:
        records, _ = read_manifest(manifest)
        index = index_for_undo([record.index for record in records], index_dir, db)
        report = undo_moves(manifest, index)
    except SimsearchError as exc:
        raise fail(str(exc)) from None
    for failure in report.failed:
        err.print(escape(f"not restored: {shown_path(failure.path)}: {terminal_text(failure.reason)}"),
                  soft_wrap=True)
    back = len(report.already_back)
    if not report.restored and not report.failed:
        err.print(f"all {plural(back, 'file')} of this manifest are back where they were already; nothing to do"
                  if back else "nothing to undo: the manifest records no moves")
    else:
        already = f" ({back} were back already)" if back else ""
        err.print(f"restored {plural(len(report.restored), 'file')}{already}"
                  + (f"; {len(report.failed)} could not be restored" if report.failed else ""))
    report_index_return(index, report, device)
    if report.failed:
        raise typer.Exit(EXIT_PARTIAL)


def index_for_undo(recorded: list[Optional[str]], index_dir: Optional[Path], db: Optional[str]
                   ) -> Optional[SimilarityIndex]:
    """The index the moved files are added back to: `--index`/`--db`, else the one the manifest names, else the
    one found from here; None (said on stderr) when there is none."""
    from retrieval.errors import IndexNotFoundError
    from retrieval.index import open_index
    from retrieval.locate import find_index_dir

    named = next((Path(path) for path in reversed(recorded) if path), None)
    chosen = index_dir is not None or db is not None or named is None or not named.is_dir()
    root = find_index_dir(index_dir) if chosen else named
    try:
        if root is None:
            raise IndexNotFoundError("no index found")
        return open_index(root, db)
    except IndexNotFoundError as exc:
        err.print(escape(f"{terminal_text(str(exc))}: the restored files are not added back to an index "
                         "(`simsearch index` adds them)"), soft_wrap=True)
        return None


def report_index_return(index: Optional[SimilarityIndex], report: UndoReport, device: Optional[str]) -> None:
    """Say how the index took the restored files back; index again those whose vectors it no longer holds."""
    if index is None:
        return
    if report.index_error is not None:
        err.print(escape(f"the index was not updated ({terminal_text(report.index_error)}): `simsearch index` the "
                         "restored files to add them back"), soft_wrap=True)
        return
    if report.reindexed:
        err.print(f"{plural(report.reindexed, 'file')} back in the index")
    if report.to_index:
        err.print(f"indexing {plural(len(report.to_index), 'restored file')} again (the index no longer held "
                  "their vectors)")
        from indexer.adding import add_to_index
        from indexer.pipeline import IndexOptions

        from cli.progress import RichReporter

        try:
            for start in range(0, len(report.to_index), REINDEX_CHUNK):
                chunk = [Path(path) for path in report.to_index[start:start + REINDEX_CHUNK]]
                with RichReporter(err) as reporter:
                    add_to_index(index, chunk, None, IndexOptions(device=device), reporter)
        except SimsearchError as exc:
            err.print(escape(f"they were not indexed ({terminal_text(str(exc))}): `simsearch index` them"),
                      soft_wrap=True)
