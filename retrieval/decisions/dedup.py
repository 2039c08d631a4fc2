"""Near-duplicate groups: every pair within a distance (FAISS range search while the index is exact, a kNN graph
through its approximate index beyond: `retrieval.vectors.neighbour_graph`; cell by cell in bounded memory beyond
`PARTITION_ABOVE` vectors: `retrieval.vectors.partitioned_pairs`), then connected components; the same/different rule
is `retrieval.decisions.calibration.decide`.

Distances are squared L2 between L2-normalised vectors (``retrieval.vectors.unit_distance``), a function of their inner
product, so ``d <= t`` is an inner-product range search (radius ``1 - t / 2``); the all-pairs work is FAISS's
(blocked BLAS), never a Python loop.

What a group proposes must be safe to delete: each member is looked at on disk when the group is made, and a path
that is not known to hold the file indexed there is left out, failing closed (`FileIdentity.is_as_indexed`): one
deleted, replaced or rewritten since, and one that no `simsearch index` has seen (a row `import` brought, which
names a path, not a file). Of several paths to one file (links) only one is a member, the one without a symbolic
link where there is one. So no proposed path is the keeper's file or another kept path's, a symbolic link is
never the keeper of a group that holds its target, and nothing an import file names is proposed or keeps.

Two rules decide beside the threshold, each in its own module: a pair in which either image is tiny or flat is a
duplicate only if their pixels agree (`retrieval.decisions.pixel_rule`; each such image is read, after the same identity
check); and a collection of look-alikes, most of it within the threshold of its nearest neighbour, gets only its
exact copies proposed unless near-duplicates are asked for (`retrieval.decisions.lookalikes`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import faiss
import numpy as np

from retrieval.decisions.calibration import decide
from retrieval.decisions.keeper_rules import DEFAULT, KeeperRule, deciding_rule, order_key
from retrieval.decisions.lookalikes import LookalikeCheck, nearest_share, share_from_pairs
from retrieval.decisions.pixel_rule import PixelJudgement, PixelSignature, indexed_signature, judge, same_by_rule
from retrieval.errors import InvalidArgumentError
from retrieval.index import SimilarityIndex
from retrieval.sources.file_identity import FileIdentity, identify_file
from retrieval.vectors.faiss_factory import EXACT, FLAT_UP_TO, new_faiss_index
from retrieval.vectors.neighbour_graph import GRAPH_NEIGHBOURS, PairSearch, graph_pairs, pair_recall
from retrieval.vectors.partitioned_pairs import partitioned_pairs
from retrieval.vectors.stored_vectors import StoredVectors
from retrieval.vectors.unit_distance import (DISTANCE_DIGITS, distance_between, radius_for_threshold,
                                             squared_l2_from_scores)

QUERY_BLOCK = 4096
"""Queries per range search call, which bounds the memory of the result lists."""
PARTITION_ABOVE = FLAT_UP_TO
"""Collections of more vectors are searched cell by cell (`retrieval.vectors.partitioned_pairs`): all of theirs at once
in float32 would take 512 MB and more (at 1,280 dimensions)."""
DECODING_THREADS = 8
"""Images read at once for the pixel rule, at most (and no more than the CPUs): Pillow decodes outside the GIL."""
Signatures = Callable[["Candidate"], PixelSignature | None]
"""What the pixel rule reads of a member: its signature, or None when its file is not the one indexed."""


@dataclass(frozen=True)
class Candidate:
    """What choosing the keeper of a group looks at."""

    path: str
    width: int | None
    height: int | None
    mtime_ns: int | None
    image_id: int | None = None
    """The indexed image (None for one that is not in an index)."""
    file_id: str | None = None
    size: int | None = None
    """With `mtime_ns`: the file as it was indexed, to tell whether its path still holds it."""
    content_hash: str | None = None

    @property
    def pixels(self) -> int:
        return (self.width or 0) * (self.height or 0)

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "width": self.width, "height": self.height, "image_id": self.image_id}


@dataclass(frozen=True)
class DuplicateGroup:
    """A keeper and the others, each within the threshold of the keeper (groups do not chain); `distances[i]` is
    the distance of `others[i]` to the keeper, `copies[i]` whether it is an exact copy (the same content),
    `pixels[i]` how its pixels compared with the keeper's where either is tiny or flat (else None; an exact copy
    is judged on its content), and
    `decided_by` the keeper rule that chose the keeper."""

    keeper: Candidate
    others: list[Candidate]
    distances: list[float]
    copies: list[bool]
    decided_by: str
    pixels: list[PixelJudgement | None]

    @property
    def weakest_link(self) -> float:
        """The largest distance to the keeper: how near the least near member is."""
        return max(self.distances, default=0.0)

    def to_dict(self) -> dict[str, object]:
        return {"keeper": self.keeper.to_dict(), "decided_by": self.decided_by,
                "weakest_link": round(self.weakest_link, DISTANCE_DIGITS),
                "duplicates": [{**other.to_dict(), "distance": round(distance, DISTANCE_DIGITS), "copy": copy,
                                "judged_on": "content" if copy else "embedding" if pixels is None else "pixels",
                                **({} if pixels is None else {"pixels": pixels.to_dict()})}
                               for other, distance, copy, pixels in zip(self.others, self.distances, self.copies,
                                                                        self.pixels)]}


CSV_HEADER = ["group", "role", "path", "distance", "width", "height", "image_id"]


def csv_rows(groups: Sequence[DuplicateGroup]) -> Iterator[list[object]]:
    """`CSV_HEADER`, then one row per image of each group: its keeper, then its duplicates."""
    yield CSV_HEADER
    for number, group in enumerate(groups, 1):
        keeper = group.keeper
        yield [number, "keeper", keeper.path, 0.0, keeper.width, keeper.height, keeper.image_id]
        for other, distance, copy in zip(group.others, group.distances, group.copies):
            yield [number, "copy" if copy else "duplicate", other.path, round(distance, DISTANCE_DIGITS), other.width,
                   other.height, other.image_id]


def keeper_order(candidate: Candidate) -> tuple[object, ...]:
    """Sort key of the default rules: most pixels first, then oldest, then shortest path (then the path)."""
    return order_key(DEFAULT)(candidate)


@dataclass(frozen=True)
class GroupingRules:
    """How groups are formed: the keeper rules in order; contents decided not to be duplicates (SHA-256 pairs,
    first < second); with `protected`, a reference mode: only a protected image keeps, and none is proposed."""

    keep: tuple[KeeperRule, ...] = DEFAULT
    distinct: frozenset[tuple[str, str]] = frozenset()
    protected: Callable[[str], bool] | None = None
    chosen: frozenset[str] = frozenset()
    """Contents a person chose to keep: they keep before any rule."""

    def is_chosen(self, image: Candidate) -> bool:
        return image.content_hash is not None and image.content_hash in self.chosen

    def apart(self, first: Candidate, second: Candidate) -> bool:
        a, b = first.content_hash, second.content_hash
        return a is not None and b is not None and (min(a, b), max(a, b)) in self.distinct


def pairs_within(vectors: np.ndarray, threshold: float, max_pairs: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` of rows of `vectors` (L2-normalised) with squared L2 distance <= `threshold`.

    Returns (first, second, distance) arrays. With `max_pairs`, memory stays near that many pairs: rows are
    searched in blocks sized by how many matches the densest of a few probed rows has (`_rows_per_block`), and
    more pairs than that are an `InvalidArgumentError`, raised as soon as a block finds them.
    """
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    index = new_faiss_index(data.shape[1], EXACT)
    index.add(data)
    radius = radius_for_threshold(threshold)
    block = QUERY_BLOCK if max_pairs is None else _rows_per_block(index, data, radius, max_pairs)
    firsts, seconds, distances = [], [], []
    for start in range(0, len(data), block):
        limits, scores, found = index.range_search(data[start:start + block], radius)
        rows = np.repeat(np.arange(start, start + len(limits) - 1), np.diff(limits.astype(np.int64)))
        keep = found > rows
        firsts.append(rows[keep])
        seconds.append(found[keep])
        distances.append(squared_l2_from_scores(scores[keep]))
        check_pair_count(sum(len(pairs) for pairs in firsts), threshold, max_pairs)
    return np.concatenate(firsts), np.concatenate(seconds), np.concatenate(distances)


def _rows_per_block(index: faiss.Index, data: np.ndarray, radius: float, max_pairs: int) -> int:
    """Rows to range-search at once so that their answers hold about a quarter of `max_pairs` at most, judged
    by the densest of up to 64 rows spread over `data` (few enough that their own answers stay within the bound).
    Blocks smaller than `QUERY_BLOCK` run slower (below ~1,000 rows, several times), so only a dense threshold
    gets them."""
    probed = np.linspace(0, len(data) - 1, num=max(1, min(64, max_pairs // max(1, len(data))))).astype(np.int64)
    limits, _, _ = index.range_search(data[probed], radius)
    densest = int(np.diff(limits.astype(np.int64)).max())
    return max(1, min(QUERY_BLOCK, max_pairs // max(1, 4 * densest)))


def check_pair_count(count: int, threshold: float, max_pairs: int | None) -> None:
    """`InvalidArgumentError` when `count` pairs are more than `max_pairs` (None: no bound)."""
    if max_pairs is not None and count > max_pairs:
        raise InvalidArgumentError(f"threshold {threshold:g} finds more than {max_pairs:,} pairs of near "
                                   "duplicates: lower the threshold")


def connected_groups(count: int, first: np.ndarray, second: np.ndarray) -> list[np.ndarray]:
    """Members (row numbers) of each connected component with at least two members."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(first), dtype=np.int8), (first, second)), shape=(count, count))
    _, component = connected_components(graph, directed=False)
    order = np.argsort(component, kind="stable")
    starts = np.flatnonzero(np.diff(component[order], prepend=-1))
    return [members for members in np.split(order, starts[1:]) if len(members) > 1]


def duplicate_groups(vectors: np.ndarray, owners: Sequence[Sequence[Candidate]], threshold: float,
                     identify: Callable[[str], FileIdentity | None] = identify_file,
                     pairs: tuple[np.ndarray, np.ndarray] | None = None,
                     rules: GroupingRules | None = None, max_pairs: int | None = None,
                     signatures: Signatures | None = None) -> list[DuplicateGroup]:
    """Groups of near-duplicate images; `owners[i]` are the images whose vector is `vectors[i]` (copies of one
    file share a vector, and are duplicates of each other at distance 0). Largest groups first.

    Within each set of images linked by close pairs, the image the keeper rules prefer keeps, those within the
    threshold of it (and not decided apart from it, and whose pixels agree with its where either is tiny or
    flat: `retrieval.decisions.pixel_rule`) join it, and the rest form groups of their own in the same way: no member is
    ever further than the threshold from its keeper.

    `identify` tells what each member's path reaches now (one path per file is kept; see the module's doc), and
    `signatures` what the pixel rule reads of a member (default: its file, after the same identity check).
    `pairs` (rows i, j within the threshold) found otherwise (`retrieval.vectors.neighbour_graph`); else every pair is
    searched exactly, at most `max_pairs` of them (`pairs_within`).
    """
    rules = rules or GroupingRules()
    read = signatures or (lambda image: indexed_signature(image.path, image.file_id, image.size, image.mtime_ns,
                                                          identify))
    first, second = pairs if pairs is not None else pairs_within(vectors, threshold, max_pairs)[:2]
    linked = set(np.concatenate([first, second]).tolist())
    components = connected_groups(len(vectors), first, second)
    components += [np.array([i]) for i, images in enumerate(owners) if len(images) > 1 and i not in linked]
    present = [_one_path_per_file([(image, int(row)) for row in members for image in owners[int(row)]], identify)
               for members in components]
    pixels = _signatures_of(present, read)
    groups = []
    for images in present:
        groups += _groups_around_keepers(images, vectors, threshold, rules, pixels)
    groups.sort(key=lambda group: (-len(group.others), group.keeper.path))
    return groups


def _signatures_of(present: list[list[tuple[Candidate, int]]], read: Signatures) -> dict[int, PixelSignature | None]:
    """The signature of each content (row) that may be compared with another: one member's, read a few at a time."""
    chosen: dict[int, Candidate] = {}
    for images in present:
        if len({row for _, row in images}) > 1:
            for image, row in images:
                chosen.setdefault(row, image)
    if not chosen:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(DECODING_THREADS, os.cpu_count() or 1))) as pool:
        return dict(zip(chosen, pool.map(read, chosen.values())))


def _groups_around_keepers(images: list[tuple[Candidate, int]], vectors: np.ndarray, threshold: float,
                           rules: GroupingRules, pixels: dict[int, PixelSignature | None]) -> list[DuplicateGroup]:
    protected = rules.protected
    key = order_key(rules.keep)
    remaining = sorted(images, key=lambda pair: (0 if protected and protected(pair[0].path) else 1,
                                                 0 if rules.is_chosen(pair[0]) else 1, key(pair[0])))
    groups = []
    while len(remaining) > 1:
        (keeper, keeper_row), rest = remaining[0], remaining[1:]
        if protected is not None and not protected(keeper.path):
            break  # reference mode: what is left has no protected image to be a duplicate of
        joined: list[tuple[Candidate, int, float, PixelJudgement | None]] = []
        left = []
        for image, row in rest:
            distance = 0.0 if row == keeper_row else distance_between(vectors[row], vectors[keeper_row])
            eligible = protected is None or not protected(image.path)
            within = decide(distance, threshold) and eligible and not rules.apart(keeper, image)
            judgement = None if row == keeper_row or not within else judge(pixels.get(keeper_row), pixels.get(row))
            if same_by_rule(within, judgement):
                joined.append((image, row, distance, judgement))
            else:
                left.append((image, row))
        if joined:
            runner_up = min((image for image, _, _, _ in joined), key=key)
            if protected is not None:
                decided = "protected"
            elif rules.is_chosen(keeper) and not rules.is_chosen(runner_up):
                decided = "chosen"
            else:
                decided = deciding_rule(rules.keep, keeper, runner_up)
            groups.append(DuplicateGroup(keeper, [image for image, _, _, _ in joined],
                                         [distance for _, _, distance, _ in joined],
                                         [row == keeper_row for _, row, _, _ in joined], decided,
                                         [judgement for _, _, _, judgement in joined]))
        remaining = left
    return groups


def _one_path_per_file(images: list[tuple[Candidate, int]], identify: Callable[[str], FileIdentity | None]
                       ) -> list[tuple[Candidate, int]]:
    """The members whose path is known to hold the file indexed there (`FileIdentity.is_as_indexed`), one path
    per file: the one without a symbolic link, then the one the keeper rule prefers."""
    present = [(image, row, identity) for image, row in images if (identity := identify(image.path)) is not None
               and identity.is_as_indexed(image.file_id, image.size, image.mtime_ns)]
    present.sort(key=lambda member: (member[2].via_link, keeper_order(member[0])))
    files: dict[str, tuple[Candidate, int]] = {}
    for image, row, identity in present:
        files.setdefault(identity.file_id, (image, row))
    return list(files.values())


@dataclass(frozen=True)
class DuplicateSearch:
    """Duplicate groups, how their pairs were found (exact, or a kNN graph with its measured recall), and how
    much of the collection lies within the threshold of its nearest neighbour (`retrieval.decisions.lookalikes`)."""

    groups: list[DuplicateGroup]
    pairs: PairSearch
    lookalikes: LookalikeCheck

    def to_dict(self) -> dict[str, object]:
        return {"groups": [group.to_dict() for group in self.groups], "pairs": self.pairs.to_dict(),
                "lookalikes": self.lookalikes.to_dict()}


NO_PAIRS = (np.empty(0, np.int64), np.empty(0, np.int64))


def exact_duplicates(vectors: np.ndarray, owners: Sequence[Sequence[Candidate]], threshold: float,
                     rules: GroupingRules | None = None, max_pairs: int | None = None, lookalikes: bool = False,
                     identify: Callable[[str], FileIdentity | None] = identify_file,
                     signatures: Signatures | None = None) -> DuplicateSearch:
    """`duplicate_groups` over every pair, found exactly, after the look-alike check: in a collection of
    look-alikes only exact copies are grouped (no pair is searched), unless `lookalikes` asks for near-duplicates
    too."""
    check = nearest_share(vectors, threshold, lookalikes, seed=len(vectors))
    pairs = NO_PAIRS if check.exact_only else None
    return DuplicateSearch(duplicate_groups(vectors, owners, threshold, identify, pairs, rules, max_pairs, signatures),
                           PairSearch("exact"), check)


def index_duplicates(index: SimilarityIndex, threshold: float, roots: Sequence[str] | None = None,
                     keep: Sequence[KeeperRule] = DEFAULT, reference: str | None = None,
                     max_pairs: int | None = None, lookalikes: bool = False) -> DuplicateSearch:
    """Near-duplicate groups among the indexed images (only those under `roots`, absolute paths, when given),
    kept by the rules `keep`, honouring every "not duplicates" decision stored. With `reference` (an absolute
    folder), its images are protected: they keep, and only images outside it are proposed. In a collection of
    look-alikes only exact copies are proposed, unless `lookalikes` asks for near-duplicates too.

    Up to `PARTITION_ABOVE` vectors, every pair is searched while the index's vector index is exact, and through
    it as a kNN graph once it is approximate; beyond, cell by cell in bounded memory
    (`retrieval.vectors.partitioned_pairs`), the vectors read from the database a block at a time. Beyond exact search,
    the pair recall is measured on a sample and reported. More than `max_pairs` close pairs are an
    `InvalidArgumentError`, raised before the groups are made (and, searched exactly, before more are found)."""
    scope = None if roots is None else [*roots, *([reference] if reference else [])]
    images = index.indexed_images(scope)
    prefix = None if reference is None else reference.rstrip("/") + "/"
    rules = GroupingRules(tuple(keep), frozenset((a, b) for a, b, _ in index.distinct_pairs()),
                          None if prefix is None else (lambda path: path.startswith(prefix) or path == reference),
                          frozenset(digest for digest, _ in index.chosen_keepers()))
    if len(images) > PARTITION_ABOVE:
        used = _served_among(index, np.unique(np.fromiter((row[4] for row in images), np.int64, len(images))))
        if len(used) > PARTITION_ABOVE:
            del images  # read again after the search, so that the search's memory is the search's alone
            return _partitioned_duplicates(index, scope, used, threshold, rules, max_pairs, lookalikes)
    ids, vectors = index.served_vectors()
    row_of = {int(vector_id): row for row, vector_id in enumerate(ids)}
    owners: list[list[Candidate]] = [[] for _ in range(len(ids))]
    for path, width, height, mtime_ns, vector_id, image_id, file_id, size, digest in images:
        row = row_of.get(int(vector_id))
        if row is not None:
            owners[row].append(Candidate(path, width, height, mtime_ns, image_id, file_id, size, digest))
    used = np.array([row for row, held in enumerate(owners) if held], dtype=np.int64)
    if len(used) == 0:
        return DuplicateSearch([], PairSearch("exact"), LookalikeCheck(0.0, 0, 0, lookalikes))
    subset, members = vectors[used], [owners[row] for row in used]
    info = index.vector_info()
    if info is None or info.description == EXACT:
        return exact_duplicates(subset, members, threshold, rules, max_pairs, lookalikes)
    first, second, _ = graph_pairs(index.vector_index(), ids[used], subset, threshold)
    check_pair_count(len(first), threshold, max_pairs)
    check = share_from_pairs(len(used), first, second, lookalikes)
    recall, sampled = pair_recall(subset, first, second, threshold, seed=len(used))
    pairs = NO_PAIRS if check.exact_only else (first, second)
    groups = duplicate_groups(subset, members, threshold, pairs=pairs, rules=rules)
    return DuplicateSearch(groups, PairSearch("knn-graph", GRAPH_NEIGHBOURS, recall, sampled), check)


def _served_among(index: SimilarityIndex, vector_ids: np.ndarray) -> np.ndarray:
    """Those of `vector_ids` (sorted) that the served model's vectors hold."""
    return np.intersect1d(vector_ids, index.served_ids(), assume_unique=True)


def _partitioned_duplicates(index: SimilarityIndex, scope: Sequence[str] | None, used: np.ndarray,
                            threshold: float, rules: GroupingRules, max_pairs: int | None,
                            lookalikes: bool) -> DuplicateSearch:
    """`index_duplicates` over the vectors `used` (sorted ids) of the images in `scope` by the partitioned search:
    the images are read after it (those whose vectors it searched), and only the vectors of images in a pair, or
    of copies sharing one, are then read whole, to form the groups."""
    model = index.served_model()
    assert model is not None
    source = StoredVectors(index, used, model.embedding_dim)
    found = partitioned_pairs(source, threshold, max_pairs, seed=len(used))
    check = share_from_pairs(len(used), found.first, found.second, lookalikes)
    search = PairSearch("partitioned", found.most_visits, found.recall, found.sampled, found.cells)
    pairs = NO_PAIRS if check.exact_only else (found.first, found.second)
    images = index.indexed_images(scope)
    vector_ids = np.fromiter((row[4] for row in images), np.int64, len(images))
    searched = np.isin(vector_ids, used)
    images = [image for image, kept in zip(images, searched.tolist()) if kept]
    rows_of_images = np.searchsorted(used, vector_ids[searched])
    shared = np.flatnonzero(np.bincount(rows_of_images, minlength=len(used)) > 1)
    kept = np.union1d(np.union1d(pairs[0], pairs[1]), shared).astype(np.int64)
    owners: list[list[Candidate]] = [[] for _ in range(len(kept))]
    places = np.searchsorted(kept, rows_of_images)
    for image, place, row in zip(images, places.tolist(), rows_of_images.tolist()):
        if place < len(kept) and kept[place] == row:
            owners[place].append(Candidate(*image[:4], *image[5:]))  # type: ignore[arg-type]
    local = (np.searchsorted(kept, pairs[0]), np.searchsorted(kept, pairs[1]))
    groups = duplicate_groups(source.rows(kept), owners, threshold, pairs=local, rules=rules)
    return DuplicateSearch(groups, search, check)
