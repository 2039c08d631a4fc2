"""A dedup manifest written whole and atomically (`retrieval.atomic`): parquet, JSON lines or CSV by the file's
suffix, one row a sample (`retrieval.decisions.sample_groups.SampleDecision`)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from retrieval.atomic import atomic_write
from retrieval.decisions.sample_groups import SampleDecision
from retrieval.errors import InvalidArgumentError

COLUMNS = ("key", "shard", "group", "keep", "duplicate_of", "distance", "copy", "status", "error")
FORMATS = (".parquet", ".jsonl", ".csv")


def check_manifest_path(path: Path) -> None:
    """`InvalidArgumentError` unless `path` ends in a suffix a manifest is written as."""
    if path.suffix.lower() not in FORMATS:
        raise InvalidArgumentError(f"{path}: a manifest is a {', '.join(FORMATS)} file")


def write_manifest(path: Path, rows: Sequence[SampleDecision]) -> None:
    """Write `rows` to `path` as its suffix says; `OutputWriteError` if it cannot be written."""
    check_manifest_path(path)
    records = [row.to_dict() for row in rows]
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        atomic_write(path, lambda target: _write_parquet(target, records), "manifest")
    elif suffix == ".jsonl":
        atomic_write(path, lambda target: target.write_text(
            "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8"),
            "manifest")
    else:
        atomic_write(path, lambda target: _write_csv(target, records), "manifest")


def _write_parquet(target: Path, records: list[dict[str, object]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("key", pa.string()), ("shard", pa.string()), ("group", pa.int64()), ("keep", pa.bool_()),
                        ("duplicate_of", pa.string()), ("distance", pa.float64()), ("copy", pa.bool_()),
                        ("status", pa.string()), ("error", pa.string())])
    pq.write_table(pa.Table.from_pylist(records, schema=schema), target)


def _write_csv(target: Path, records: list[dict[str, object]]) -> None:
    with open(target, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(records)


def read_manifest(path: Path) -> list[dict[str, object]]:
    """The rows of a parquet manifest, as dicts (for tests and benchmarks)."""
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()
