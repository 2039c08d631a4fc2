"""What a class is, for every command that reads classes from folders (train, eval, calibrate, classify's
support folder, and the label `index` records): the folder that holds the images, named by its path under the
folder given ("cat", or "Latin/character01" in a nested tree, so that equal leaf names in different branches
stay different classes). A file directly in the given folder belongs to no class."""

from __future__ import annotations

import os
from pathlib import PurePath


def class_of(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> str | None:
    """The class of the file at `path` under the folder `root`, or None for a file directly in `root`."""
    folder = os.path.relpath(os.path.dirname(os.fspath(path)), os.fspath(root))
    return None if folder == os.curdir else PurePath(folder).as_posix()
