"""One place for how a benchmark keeps its figures: one JSON line appended to its file under benchmarks/results/."""

from __future__ import annotations

import json
from pathlib import Path


def append_result(path: Path, record: dict[str, object]) -> None:
    """Append `record` to the results file `path` (made with its folder where missing) as one JSON line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
