"""Near-duplicate grouping: range search + connected components, and the keeper rule."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from retrieval.decisions import dedup
from retrieval.decisions.dedup import Candidate, DuplicateGroup, connected_groups, keeper_order, pairs_within
from retrieval.decisions.pixel_rule import PixelSignature
from retrieval.errors import InvalidArgumentError
from retrieval.sources.file_identity import FileIdentity


def duplicate_groups(*args: object, **options: object) -> list[DuplicateGroup]:
    """`retrieval.decisions.dedup.duplicate_groups` of images that are neither tiny nor flat, whose pixels are never
    read (these tests' paths are not on disk; the pixel rule is tested in tests/test_lookalikes.py)."""
    photo = PixelSignature(np.zeros((8, 8, 3), np.float32), 50.0, 640, 480)
    return dedup.duplicate_groups(*args, signatures=lambda _: photo, **options)  # type: ignore[arg-type]


def image(path: str, width: int | None, height: int | None, mtime_ns: int | None, file_id: str | None = None,
          **fields: object) -> Candidate:
    """An indexed image of 1 byte whose file is `file_id` (default: its own, named as its path)."""
    return Candidate(path, width, height, mtime_ns, file_id=file_id or path, size=1, **fields)  # type: ignore[arg-type]


def as_indexed(owners: list[list[Candidate]], links: tuple[str, ...] = (), gone: tuple[str, ...] = ()
               ) -> Callable[[str], FileIdentity | None]:
    """What each image's path reaches: the file indexed there (through a symbolic link for `links`), or nothing
    for `gone` (deleted since). The paths of these tests are not on disk."""
    files: dict[str, FileIdentity | None] = {
        c.path: FileIdentity(c.file_id or "", c.path in links, c.size, c.mtime_ns) for images in owners for c in images}
    files.update(dict.fromkeys(gone))
    return files.__getitem__


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def near_copies(seed: int = 0) -> np.ndarray:
    """Rows 0-1-2 a chain of steps of squared distance 0.017 (0 to 2: 0.032), 3-4 a pair at 0.0015, 5-9 alone."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((10, 64))
    base[1] = base[0] + 0.12 * rng.standard_normal(64)
    base[2] = base[1] + 0.12 * rng.standard_normal(64)
    base[4] = base[3] + 0.05 * rng.standard_normal(64)
    return unit(base)


def brute_force_pairs(vectors: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    distances = 2 - 2 * vectors @ vectors.T
    return {(i, j) for i in range(len(vectors)) for j in range(i + 1, len(vectors)) if distances[i, j] <= threshold}


def test_range_search_finds_exactly_the_pairs_within_the_threshold() -> None:
    vectors = unit(np.random.default_rng(1).standard_normal((300, 8)))
    first, second, distances = pairs_within(vectors, 0.3)
    assert set(zip(first.tolist(), second.tolist())) == brute_force_pairs(vectors, 0.3)
    assert np.allclose(distances, 2 - 2 * np.sum(vectors[first] * vectors[second], axis=1), atol=1e-5)


def test_groups_are_connected_components_of_the_pairs() -> None:
    vectors = near_copies()
    first, second, _ = pairs_within(vectors, 0.025)
    assert (0, 2) not in set(zip(first.tolist(), second.tolist()))
    groups = sorted(sorted(g.tolist()) for g in connected_groups(len(vectors), first, second))
    assert groups == [[0, 1, 2], [3, 4]]


def test_keeper_is_largest_then_oldest_then_shortest_path() -> None:
    big = Candidate("/photos/a/long-name.jpg", 4000, 3000, 50)
    small_old = Candidate("/p/x.jpg", 640, 480, 1)
    same_size_older = Candidate("/photos/b/other-long-name.jpg", 4000, 3000, 10)
    short = Candidate("/p/y.jpg", 4000, 3000, 10)
    ranked = sorted([big, small_old, same_size_older, short], key=keeper_order)
    assert ranked == [short, same_size_older, big, small_old]


def test_duplicate_groups_name_keeper_and_others_and_count_shared_vectors() -> None:
    vectors = near_copies()
    owners = [[image(f"/c/{i}.jpg", 100, 100, i)] for i in range(10)]
    owners[1] = [image("/c/1.jpg", 200, 200, 5)]
    owners[7].append(image("/c/7-copy.jpg", 100, 100, 3))
    groups = duplicate_groups(vectors, owners, 0.025, as_indexed(owners))
    assert [(g.keeper.path, sorted(o.path for o in g.others)) for g in groups] == [
        ("/c/1.jpg", ["/c/0.jpg", "/c/2.jpg"]),
        ("/c/3.jpg", ["/c/4.jpg"]),
        ("/c/7-copy.jpg", ["/c/7.jpg"]),
    ]
    assert groups[2].distances == [0.0]
    assert all(0 < d <= 0.2 for d in groups[0].distances)


def test_nothing_within_the_threshold_gives_no_groups() -> None:
    vectors = unit(np.eye(5, 16))
    owners = [[image(f"/{i}", 1, 1, 0)] for i in range(5)]
    assert duplicate_groups(vectors, owners, 0.5, as_indexed(owners)) == []


def test_paths_to_one_file_are_one_member_and_a_link_never_keeps_its_target() -> None:
    """/c/link.jpg is a symbolic link to /c/1.jpg and /c/hard.jpg a hard link of /c/2.jpg: neither is a second
    image, and /c/gone.jpg (deleted since it was indexed) is neither kept nor proposed."""
    vectors = near_copies()
    owners = [[image(f"/c/{i}.jpg", 100, 100, i)] for i in range(10)]
    owners[1] = [image("/c/1.jpg", 100, 100, 5), image("/c/link.jpg", 100, 100, 5, "/c/1.jpg")]
    owners[2].append(image("/c/hard.jpg", 100, 100, 2, "/c/2.jpg"))
    owners[4].append(image("/c/gone.jpg", 900, 900, 0))
    groups = duplicate_groups(vectors, owners, 0.025, as_indexed(owners, links=("/c/link.jpg",), gone=("/c/gone.jpg",)))
    assert [(g.keeper.path, sorted(o.path for o in g.others)) for g in groups] == [
        ("/c/0.jpg", ["/c/1.jpg"]),  # /c/2.jpg is near /c/1.jpg, not near the keeper: groups do not chain
        ("/c/3.jpg", ["/c/4.jpg"]),
    ]


def test_a_file_and_its_links_alone_are_no_group() -> None:
    vectors = unit(np.eye(3, 8))
    owners = [[image("/a.jpg", 1, 1, 0), image("/l/a.jpg", 9, 9, 0, "/a.jpg")], [image("/b.jpg", 1, 1, 0)],
              [image("/c.jpg", 1, 1, 0)]]
    assert duplicate_groups(vectors, owners, 0.5, as_indexed(owners, links=("/l/a.jpg",))) == []


@pytest.mark.parametrize("unknown", ["file_id", "size", "mtime_ns"])
def test_an_image_not_known_to_be_its_indexed_file_neither_keeps_nor_is_proposed(unknown: str) -> None:
    """Fail closed: a row without a device and inode (as `import` makes them), a size or a modification time is
    not the file at its path, whatever that file is."""
    vectors = unit(np.eye(1, 8))
    keeper, copy = image("/a.jpg", 9, 9, 1), image("/b.jpg", 1, 1, 1)
    files = as_indexed([[keeper, copy]])
    assert [g.keeper.path for g in duplicate_groups(vectors, [[keeper, copy]], 0.1, files)] == ["/a.jpg"]
    for owners in ([[keeper, replace(copy, **{unknown: None})]], [[replace(keeper, **{unknown: None}), copy]]):
        assert duplicate_groups(vectors, owners, 0.1, files) == []


def test_groups_do_not_chain_and_name_their_weakest_link_rule_and_copies() -> None:
    """0-1-2 is a chain (0 and 2 are not near each other): the keeper takes only those near it."""
    vectors = near_copies()
    owners = [[image(f"/c/{i}.jpg", 100, 100, i, content_hash=f"h{i}")] for i in range(10)]
    owners[3].append(image("/c/3-copy.jpg", 100, 100, 9, content_hash="h3"))
    groups = duplicate_groups(vectors, owners, 0.025, as_indexed(owners))
    chained = next(g for g in groups if g.keeper.path == "/c/0.jpg")
    assert [o.path for o in chained.others] == ["/c/1.jpg"] and chained.weakest_link == max(chained.distances)
    assert chained.decided_by == "oldest", "same pixels: the older one keeps"
    threes = next(g for g in groups if g.keeper.path == "/c/3.jpg")
    assert dict(zip((o.path for o in threes.others), threes.copies)) == {"/c/3-copy.jpg": True, "/c/4.jpg": False}
    assert threes.to_dict()["duplicates"][0]["copy"] in (True, False) and "weakest_link" in threes.to_dict()


def test_keeper_rules_in_order_and_the_rule_that_decided() -> None:
    from retrieval.decisions.dedup import GroupingRules
    from retrieval.decisions.keeper_rules import parse_rules

    vectors = near_copies()
    owners = [[image(f"/c/{i}.jpg", 100, 100, i)] for i in range(10)]
    owners[4] = [image("/keep/4.png", 100, 100, 40)]
    [group] = [g for g in duplicate_groups(vectors, owners, 0.025, as_indexed(owners),
                                           rules=GroupingRules(parse_rules("format:png,oldest")))
               if g.keeper.path.endswith("4.png")]
    assert group.decided_by == "format:png" and [o.path for o in group.others] == ["/c/3.jpg"]
    [group] = [g for g in duplicate_groups(vectors, owners, 0.025, as_indexed(owners),
                                           rules=GroupingRules(parse_rules("prefer:/keep"))) if "4" in g.keeper.path]
    assert group.decided_by == "prefer:/keep"
    with pytest.raises(InvalidArgumentError, match="'biggest' is not a rule"):
        parse_rules("biggest,oldest")


def test_decided_apart_pairs_and_a_protected_reference_folder() -> None:
    from retrieval.decisions.dedup import GroupingRules

    vectors = near_copies()
    owners = [[image(f"/c/{i}.jpg", 100, 100, i, content_hash=f"h{i}")] for i in range(10)]
    apart = GroupingRules(distinct=frozenset({("h3", "h4")}))
    assert all(g.keeper.path != "/c/3.jpg" for g in duplicate_groups(vectors, owners, 0.025, as_indexed(owners),
                                                                     rules=apart)), "3 and 4 were decided apart"
    owners[4] = [image("/ref/4.jpg", 10, 10, 99, content_hash="h4")]
    reference = GroupingRules(protected=lambda path: path.startswith("/ref/"))
    groups = duplicate_groups(vectors, owners, 0.025, as_indexed(owners), rules=reference)
    assert [(g.keeper.path, [o.path for o in g.others], g.decided_by) for g in groups] == [
        ("/ref/4.jpg", ["/c/3.jpg"], "protected")], "only images outside the reference are proposed"
