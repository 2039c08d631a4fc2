"""Caches that cannot be saved in the index directory (a read-only directory, a full disk): what they hold is
served from memory instead, and the user is told once, as a warning rather than an error: every answer is still
right, only the next process (or request) makes it again.

Warnings go out through `logging` (under the `retrieval` logger): the command line prints each as one line,
`warning: ...` (`cli.common`); a program that uses the library sees them as its logging is set up.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from retrieval.errors import OutputWriteError

_log = logging.getLogger(__name__)
_said: set[tuple[Path, str]] = set()
_lock = threading.Lock()


def not_saved(root: Path, instead: str, error: OutputWriteError) -> None:
    """Say what is done `instead` of saving a cache of the index directory `root`, and why (`error`): once per
    process, directory and cache."""
    with _lock:
        if (root, instead) in _said:
            return
        _said.add((root, instead))
    _log.warning("%s, not saved: %s", instead, error)
