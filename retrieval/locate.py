"""Where the index directory is: `--index DIR`, then `$SIMSEARCH_INDEX`, then `.simsearch/`
found upward from the working directory, as git finds `.git/`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

INDEX_DIRNAME = ".simsearch"
INDEX_ENV_VAR = "SIMSEARCH_INDEX"


def find_index_dir(explicit: Path | None = None, *, environ: Mapping[str, str] | None = None,
                   cwd: Path | None = None) -> Path | None:
    """The index directory to use, or None when there is none yet."""
    chosen = _chosen_dir(explicit, os.environ if environ is None else environ)
    if chosen is not None:
        return chosen
    start = (cwd or Path.cwd()).absolute()
    for directory in (start, *start.parents):
        candidate = directory / INDEX_DIRNAME
        if candidate.is_dir():
            return candidate
    return None


def index_dir_for_writing(explicit: Path | None = None, *, environ: Mapping[str, str] | None = None,
                          cwd: Path | None = None) -> Path:
    """The index directory to fill: an existing one as `find_index_dir` finds it, else `.simsearch/`
    in the working directory."""
    found = find_index_dir(explicit, environ=environ, cwd=cwd)
    return found if found is not None else (cwd or Path.cwd()).absolute() / INDEX_DIRNAME


def _chosen_dir(explicit: Path | None, environ: Mapping[str, str]) -> Path | None:
    if explicit is not None:
        return explicit.absolute()
    from_env = environ.get(INDEX_ENV_VAR)
    return Path(from_env).absolute() if from_env else None
