"""Labelled pairs from a CSV file (`path_a,path_b,same`), for calibration."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from retrieval.errors import InputPathError

HEADER = ["path_a", "path_b", "same"]
TRUE = {"1", "true", "yes", "same"}
FALSE = {"0", "false", "no", "different"}


@dataclass(frozen=True)
class LabelledPairs:
    files: list[Path]
    """Each file once; the pairs index into it."""
    first: list[int]
    second: list[int]
    same: list[bool]


def read_pairs_csv(path: Path) -> LabelledPairs:
    """Read and check the whole file before anything is embedded: the header, every `same` value, every file.

    Relative paths are taken relative to the CSV's folder. Raises `InputPathError` with the line at fault, or
    "not a CSV of pairs" for a file that is not UTF-8 text in CSV (an image given by mistake, say).
    """
    if not path.is_file():
        raise InputPathError(f"no such file: {path}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return _read_pairs(path, csv.reader(handle))
    except UnicodeDecodeError as exc:
        raise InputPathError(f"{path}: not a CSV of pairs ({','.join(HEADER)}): it is not UTF-8 text") from exc
    except csv.Error as exc:
        raise InputPathError(f"{path}: not a CSV of pairs ({','.join(HEADER)}): {exc}") from exc
    except OSError as exc:
        raise InputPathError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _read_pairs(path: Path, reader: Iterator[list[str]]) -> LabelledPairs:
    files: dict[Path, int] = {}
    first, second, same = [], [], []
    header = [cell.strip().lower() for cell in next(reader, [])]
    if header != HEADER:
        found = ",".join(header)
        shown = found if len(found) <= 60 else found[:57] + "..."
        raise InputPathError(f"{path}: the header must be {','.join(HEADER)} (found {shown or 'nothing'})")
    for line, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != 3:
            raise InputPathError(f"{path}:{line}: expected 3 columns, found {len(row)}")
        value = row[2].strip().lower()
        if value not in TRUE | FALSE:
            raise InputPathError(f"{path}:{line}: `same` must be 1/0 or true/false, not {row[2]!r}")
        ends = []
        for cell in row[:2]:
            file = path.parent / cell.strip()
            if not file.is_file():  # before resolving: a name with a NUL byte is no file, but resolve raises
                raise InputPathError(f"{path}:{line}: no such file: {cell.strip()}")
            ends.append(files.setdefault(file.resolve(), len(files)))
        first.append(ends[0])
        second.append(ends[1])
        same.append(value in TRUE)
    if not any(same) or all(same):
        raise InputPathError(f"{path}: calibration needs both same and different pairs")
    return LabelledPairs(list(files), first, second, same)
