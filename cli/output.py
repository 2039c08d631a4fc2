r"""How text that may hold a file name leaves the program: JSON and CSV as valid UTF-8, the terminal with every
control character made visible, `--print0` as the file names' exact bytes.

A Linux file name is bytes. Python decodes one that is not UTF-8 with surrogateescape: each byte that does not
decode becomes a lone surrogate (U+DC80..U+DCFF), which no UTF-8 writer accepts. Wherever a name is shown, such a
byte is written as the four characters `\xNN`, as Python's `backslashreplace` decoding writes it. That is for
reading, not reversible (a name that really holds a backslash, then `xff`, reads the same); `--print0` is the
exact form.

On the terminal, the control characters (C0, DEL, C1) and the line and paragraph separators are escaped as well:
`\n`, `\t`, `\x1b`, `\x9b`, `\u2028`, ... A file named `a<ESC>[31mred.png` shows as `a\x1b[31mred.png` instead of
turning the rest of the output red, and a name with a newline stays on its line.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence

_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_RAW_IN_JSON = re.compile("[\x7f-\x9f\u2028\u2029]")
"""What `json.dumps(ensure_ascii=False)` leaves raw among `_CONTROL` (it escapes C0 itself)."""


def valid_text(text: str) -> str:
    r"""`text` with each undecodable byte of a file name as `\xNN` (any other lone surrogate as `\uNNNN`), so
    that it encodes as UTF-8."""
    return _SURROGATE.sub(_escape_surrogate, text)


def terminal_text(text: str) -> str:
    r"""`text` fit for a terminal: `valid_text`, with control characters escaped (`\n`, `\x1b`, ...)."""
    return _CONTROL.sub(_escape_character, valid_text(text))


def write_json(payload: object, *, one_line: bool = False) -> None:
    """Print `payload` as JSON (indented, or on one line for a stream of records), every string `valid_text`.

    Non-ASCII text stays readable; DEL, C1 controls and line separators are written as `\\uNNNN` escapes like the
    C0 ones, the same JSON value, so that JSON printed to a terminal cannot drive it either.
    """
    text = json.dumps(_valid_strings(payload), indent=None if one_line else 2, ensure_ascii=False)
    _write((_RAW_IN_JSON.sub(lambda found: f"\\u{ord(found[0]):04x}", text) + "\n").encode("utf-8"))


def write_csv(rows: Iterable[Sequence[object]]) -> None:
    """Print `rows` as CSV, every string `valid_text` (the csv module quotes commas, quotes and newlines)."""
    buffer = io.StringIO()
    csv.writer(buffer).writerows([valid_text(cell) if isinstance(cell, str) else cell for cell in row] for row in rows)
    _write(buffer.getvalue().encode("utf-8"))


def write_paths0(paths: Iterable[str]) -> None:
    """Print each path as its exact bytes on disk, each followed by a NUL (for `xargs -0`)."""
    _write(b"".join(os.fsencode(path) + b"\0" for path in paths))


def _write(data: bytes) -> None:
    """Write to stdout's bytes (UTF-8 text is encoded by the callers, whatever the locale's encoding) after what
    was printed before, and flush: a pipeline gets each record at once."""
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _valid_strings(value: object) -> object:
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, dict):
        return {_valid_strings(key): _valid_strings(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_valid_strings(item) for item in value]
    return value


def _escape_surrogate(found: re.Match[str]) -> str:
    code = ord(found[0])
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def _escape_character(found: re.Match[str]) -> str:
    return found[0].encode("unicode_escape").decode("ascii")


ELLIPSIS = "…"
TABLE_PATH_MIN = 16
"""The fewest cells a path column is given, however narrow the terminal (rich then wraps the table)."""


def shortened_middle(text: str, width: int) -> str:
    """`text` (a path as shown) in at most `width` cells, shortened in the middle rather than cut at its end, where
    what tells edits apart stands (`IMG_0001_crop.jpg`, `IMG_0001_q40.jpg`): `…/` and as many of its last
    components as fit, the file name always whole where it fits (`…/holiday/IMG_0001_q40.jpg`); a file name too
    long for `width` keeps its start and, longer, its end around `…`."""
    from rich.cells import cell_len

    if cell_len(text) <= width:
        return text
    head, _, name = text.rpartition("/")
    kept = name
    for part in reversed(head.split("/") if head else []):
        if cell_len(f"{ELLIPSIS}/{part}/{kept}") > width:
            break
        kept = f"{part}/{kept}"
    if kept != name or cell_len(f"{ELLIPSIS}/{name}") <= width:
        return f"{ELLIPSIS}/{kept}"
    return _cut_middle(name, width)


def _cut_middle(text: str, width: int) -> str:
    """`text` as its start, `…` and its end (two thirds of the room), in at most `width` cells."""
    from rich.cells import cell_len

    room = max(width - 1, 2)
    end_room = (2 * room + 2) // 3
    end = ""
    for character in reversed(text):
        if cell_len(character + end) > end_room:
            break
        end = character + end
    start = ""
    for character in text:
        if cell_len(start + character) > room - cell_len(end):
            break
        start += character
    return f"{start}{ELLIPSIS}{end}"


def fit_path_columns(headers: Sequence[str], rows: Sequence[Sequence[str]], path_columns: Sequence[int],
                     width: int) -> list[list[str]]:
    """`rows` (plain cell text, markup not yet escaped) with the cells of `path_columns` shortened in the middle
    (`shortened_middle`) so that a rich table of the default box (a padding cell each side of every column, a rule
    between columns and at both edges) fits `width` cells; each path column gets at least `TABLE_PATH_MIN`."""
    from rich.cells import cell_len

    def needed(column: int) -> int:
        return max([cell_len(headers[column]), *(cell_len(row[column]) for row in rows)])

    fixed = sum(needed(c) for c in range(len(headers)) if c not in path_columns)
    room = width - fixed - (3 * len(headers) + 1)
    allowed: dict[int, int] = {}
    for done, column in enumerate(sorted(path_columns, key=needed)):  # the narrowest first, its spare room on
        share = room // (len(path_columns) - done)
        allowed[column] = max(min(needed(column), share), TABLE_PATH_MIN)
        room -= allowed[column]
    return [[shortened_middle(cell, allowed[c]) if c in allowed else cell for c, cell in enumerate(row)]
            for row in rows]
