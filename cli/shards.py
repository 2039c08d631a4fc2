"""`simsearch dedup SHARDS... --manifest OUT`: dedup over WebDataset tars and parquet files, a manifest out."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli.common import EXIT_ERROR, EXIT_PARTIAL, err, fail, plural, require_writable_folder
from cli.decide import report_choice, report_false_pairs
from cli.output import terminal_text
from retrieval.errors import SimsearchError

if TYPE_CHECKING:
    from retrieval.decisions.sample_groups import EmbeddedSample


def dedup_shards_command(shards: list[Path], manifest: Path, image_column: str, key_column: str,
                         index_dir: Optional[Path], against: Optional[Path], threshold: Optional[float],
                         precision: Optional[float], lookalikes: bool, device: Optional[str]) -> None:
    """Read, embed and decide every sample of `shards`, write the manifest (and the kept samples to `index_dir`).
    The first samples are read and their decoding started before torch is imported, as `index` does."""
    from retrieval.decisions.manifest import check_manifest_path
    from retrieval.decisions.sample_store import stored_keys
    from retrieval.models.model_spec import DEFAULT_MODEL_FILE, read_model_header
    from retrieval.sources.shard_samples import HeadStartedChunks, SampleChunks
    from retrieval.sources.shards import ShardColumns

    if index_dir is not None and against is not None:
        raise fail("choose one of --index (add the shards' kept samples to DIR) and --against (compare with DIR only)")
    store = index_dir if index_dir is not None else against
    columns = ShardColumns(image_column, key_column)
    try:
        check_manifest_path(manifest)
        require_writable_folder(manifest)
        header = read_model_header(DEFAULT_MODEL_FILE)
        chunks = HeadStartedChunks(SampleChunks(shards, columns, taken=stored_keys(store) if store else ()),
                                   header.spec.preprocessing)
    except SimsearchError as exc:
        raise fail(str(exc)) from None

    from retrieval.collection import Collection
    from retrieval.decisions.manifest import write_manifest
    from retrieval.decisions.sample_store import load_samples, save_samples
    from retrieval.decisions.shard_dedup import dedup_shards
    from retrieval.models.embedding import Embedder, pick_device
    from retrieval.models.model import load_default_model

    try:
        model = load_default_model()
        seen = None if store is None else load_samples(store, model.content_hash, model.embedding_dim,
                                                       must_exist=against is not None)
        choice = Collection(None, model).threshold_choice(threshold, precision)
        embedder = Embedder(model, pick_device(device))
    except SimsearchError as exc:
        raise fail(str(exc)) from None
    failed = 0

    with Progress(TextColumn("embedding samples"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task("samples", total=None)

        def progress(sample: EmbeddedSample) -> None:
            nonlocal failed
            if sample.error is not None:
                failed += 1
                bar.console.print(f"[yellow]warning[/]: {escape(terminal_text(sample.key))} in "
                                  f"{escape(terminal_text(sample.shard))}: {escape(terminal_text(sample.error))}",
                                  soft_wrap=True)
            bar.advance(task)

        try:
            run = dedup_shards(chunks, embedder, choice.threshold, columns=columns, seen=seen,
                               lookalikes=lookalikes, progress=progress)
        except SimsearchError as exc:
            raise fail(str(exc)) from None
    samples = len(run.samples)
    if samples == 0:
        why = f": {run.skipped[0].error}" if run.skipped else ""
        raise fail(f"no sample could be read from {plural(len(shards), 'shard')}{why}")
    report_choice(choice)
    for skip in run.skipped:
        err.print(f"[yellow]warning[/]: {escape(terminal_text(skip.error or skip.shard))}; its samples from there "
                  "on are left out", soft_wrap=True)
    check = run.decisions.lookalikes
    if not check.exact_only:
        report_false_pairs(choice, check.images + (len(seen) if seen is not None else 0))
    if check.lookalikes:
        err.print(f"[yellow]warning[/]: {escape(check.message())}", soft_wrap=True)
    if run.renamed:
        err.print(f"[yellow]warning[/]: {plural(run.renamed, 'key')} met more than once: named KEY@SHARD from "
                  "the second on", soft_wrap=True)
    try:
        write_manifest(manifest, run.rows)
        if index_dir is not None:
            assert seen is not None
            save_samples(index_dir, seen.with_kept(run.samples, run.decisions.rows, run.signature_of),
                         model.content_hash)
    except SimsearchError as exc:
        raise fail(str(exc)) from None
    rows = run.decisions.rows
    duplicates = [row for row in rows if row.keep is False]
    copies = sum(bool(row.copy) for row in duplicates)
    err.print(escape(terminal_text(
        f"{plural(samples, 'sample')} from {plural(len(shards), 'shard')}: "
        f"{sum(row.keep is True for row in rows):,} kept, {plural(len(duplicates), 'duplicate')} "
        f"({plural(copies, 'exact copy', 'exact copies')}), {failed:,} failed, "
        f"{plural(len(run.skipped), 'shard')} not read to the end; manifest: {manifest}")), soft_wrap=True)
    if failed == samples:
        raise typer.Exit(EXIT_ERROR)
    if failed or run.skipped:
        raise typer.Exit(EXIT_PARTIAL)
