"""Where the shared datasets are, for tests, benchmarks and `simsearch eval` on them: the one rule.

`$SIMSEARCH_DATASETS` when set; else `../shared/datasets` beside the working directory (the repository root,
where the tests, the benchmarks and CI run); else beside the source tree, for a checkout used from another
directory. An installed package has no source tree beside the data, which is why the working directory comes
first. Nothing is ever downloaded: where the folder is absent, callers skip or say so.
"""

from __future__ import annotations

import os
from pathlib import Path

DATASETS_ENV = "SIMSEARCH_DATASETS"


def datasets_root() -> Path:
    """The datasets folder by the rule above; the first candidate that exists, else the working-directory one."""
    override = os.environ.get(DATASETS_ENV)
    if override:
        return Path(override)
    beside_cwd = Path.cwd().parent / "shared" / "datasets"
    beside_source = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
    return next((path for path in (beside_cwd, beside_source) if path.is_dir()), beside_cwd)
