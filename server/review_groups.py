"""What the review page shows of duplicate groups: a stable id for each group, and each member's facts.

A group's id is a hash of its members, each named by its content (SHA-256) and its path, whichever of them keeps.
It names the set of files a person reviews and acts on: it stays the same when another member is chosen to keep,
when other groups are resolved (and every later group moves up a page), across restarts, and when an undo brings
the group back; it changes when a member leaves or joins (a "not duplicates" decision, a moved, changed or newly
indexed file), because what was shown is then no longer what an action would touch. The keeper's hash alone would
not do: "keep this one" would rename the group under the page's feet.

A member's facts are those of the file as it was indexed (its dimensions and size; the group was made only of files
that still hold what was indexed, `retrieval.decisions.dedup`), what its header says (its format; its capture time and
JPEG quality, as the keeper rules read them, `retrieval.decisions.photo_facts`: else its file time, and the page says
which), and its path relative to `display_root`, the folder holding every indexed image, which `dedup --move-to` and the
page's quarantine also lay moved files out under.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from datetime import datetime

from PIL import Image, UnidentifiedImageError

from retrieval.decisions.dedup import Candidate, DuplicateGroup
from retrieval.decisions.moves import collection_root
from retrieval.decisions.photo_facts import indexed_photo_facts
from retrieval.vectors.unit_distance import DISTANCE_DIGITS, cosine_similarity

GROUP_ID_DIGITS = 16
"""Hex digits of a group id (64 bits: no two groups of one collection share one)."""
GROUP_ID_PATTERN = f"^[0-9a-f]{{{GROUP_ID_DIGITS}}}$"


def group_id(group: DuplicateGroup) -> str:
    """The id of `group` (see the module's doc)."""
    members = sorted(f"{member.content_hash}\0{member.path}" for member in (group.keeper, *group.others))
    digest = hashlib.sha256("\n".join(members).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:GROUP_ID_DIGITS]


def display_root(paths: Iterable[str]) -> str:
    """The folder every one of `paths` lies under: what the page shows paths relative to."""
    return collection_root(paths)


def file_format(path: str) -> str | None:
    """The image format named by the file's header (JPEG, PNG, ...; only the header is read), None when it cannot
    be read."""
    try:
        with Image.open(path) as image:
            return image.format
    except (OSError, UnidentifiedImageError, ValueError):
        return None


def _date(ns: int | None) -> str | None:
    if ns is None:
        return None
    return datetime.fromtimestamp(ns / 1e9).astimezone().isoformat(timespec="seconds")


def member_view(image: Candidate, root: str, distance: float | None = None, copy: bool = False,
                keeper: bool = False) -> dict[str, object]:
    """One member's facts as the page shows them; `distance` to its group's keeper (None: not in a group)."""
    relative = os.path.relpath(image.path, root) if image.path.startswith(root.rstrip(os.sep) + os.sep) \
        else image.path
    facts = indexed_photo_facts(image.path, image.file_id, image.size, image.mtime_ns)
    view: dict[str, object] = {
        "image_id": image.image_id, "path": image.path, "relative": relative,
        "folder": os.path.dirname(relative), "name": os.path.basename(image.path),
        "width": image.width, "height": image.height, "size": image.size, "format": file_format(image.path),
        "jpeg_quality": facts.jpeg_quality,
        "date": _date(facts.taken_ns if facts.taken_ns is not None else image.mtime_ns),
        "date_source": "capture time" if facts.taken_ns is not None else "file time",
        "keeper": keeper, "copy": copy}
    if distance is not None:
        view["distance"] = round(distance, DISTANCE_DIGITS)
        view["similarity"] = round(cosine_similarity(distance), DISTANCE_DIGITS)
    return view


def group_view(group: DuplicateGroup, root: str) -> dict[str, object]:
    """`group` as the page shows it: its id, the rule that chose its keeper, the weakest link, its members (the
    keeper first) with their facts."""
    members = [member_view(group.keeper, root, 0.0, keeper=True)]
    members += [member_view(other, root, distance, copy)
                for other, distance, copy in zip(group.others, group.distances, group.copies)]
    return {"id": group_id(group), "decided_by": group.decided_by,
            "weakest_link": round(group.weakest_link, DISTANCE_DIGITS),
            "weakest_similarity": round(cosine_similarity(group.weakest_link), DISTANCE_DIGITS),
            "copies": sum(group.copies), "members": members}


def find_group(groups: Sequence[DuplicateGroup], wanted: str) -> tuple[int, DuplicateGroup] | None:
    """The position and group of id `wanted` among `groups`, None when none has it (now)."""
    return next(((position, group) for position, group in enumerate(groups) if group_id(group) == wanted), None)
