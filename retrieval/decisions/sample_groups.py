"""Dedup's decisions for samples (keys and image bytes, not files): one row a sample, by the same rules as
`simsearch dedup` over files.

The groups are `retrieval.decisions.dedup.duplicate_groups`' own: every member within the threshold of its keeper (no
chaining), exact copies (one content hash) apart at distance 0, tiny or flat images judged on their pixels
(`retrieval.decisions.pixel_rule`), and in a collection of look-alikes only exact copies
(`retrieval.decisions.lookalikes`). What differs is what a member is: a sample, whose pixels are read through
`signature_of` rather than from a file, and whose keeper is chosen by `SAMPLE_RULES` (a sample has no file time, no EXIF
to read, no path on disk).

Samples seen before (`SeenSamples`: an earlier batch, an `--index` or `--against` folder) were handed on already:
a new sample within the threshold of one of them is its duplicate, and they always keep (`retrieval.decisions.dedup`'s
reference mode); the new samples left are then grouped among themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from retrieval.decisions.dedup import NO_PAIRS, Candidate, DuplicateGroup, GroupingRules, duplicate_groups
from retrieval.decisions.keeper_rules import FIXED, KeeperRule
from retrieval.decisions.lookalikes import LookalikeCheck, nearest_share
from retrieval.decisions.pixel_rule import PixelSignature, signature
from retrieval.errors import DecodeError
from retrieval.sources.file_identity import FileIdentity
from retrieval.vectors.unit_distance import DISTANCE_DIGITS

SAMPLE_RULES = (KeeperRule("largest", FIXED["largest"]), KeeperRule("first", lambda sample: sample.mtime_ns))
"""A group's keeper: the sample with the most pixels, then the one met first (in the order given: shards, then
their samples; the samples seen before all the new ones)."""

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_SKIPPED = "skipped"


@dataclass(frozen=True)
class EmbeddedSample:
    """A sample once decoded and embedded: its L2-normalised vector, or the `error` that stopped it."""

    key: str
    shard: str
    content_hash: str | None
    width: int | None
    height: int | None
    vector: np.ndarray | None
    error: str | None = None


@dataclass(frozen=True)
class SampleDecision:
    """One row of a manifest. `keep` is true for a unique sample and a group's keeper, false for a duplicate and
    None for a sample that could not be judged (`status` "failed", or "skipped" for a shard that could not be
    read on, with `error` saying why); `duplicate_of` is the keeper's key, `distance` the squared L2 distance to
    it, `copy` whether it is an exact copy (the same bytes), `group` the group's number in this run."""

    key: str | None
    shard: str
    group: int | None = None
    keep: bool | None = True
    duplicate_of: str | None = None
    distance: float | None = None
    copy: bool | None = None
    status: str = STATUS_OK
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"key": self.key, "shard": self.shard, "group": self.group, "keep": self.keep,
                "duplicate_of": self.duplicate_of, "distance": self.distance, "copy": self.copy,
                "status": self.status, "error": self.error}


@dataclass(frozen=True)
class SeenSamples:
    """Samples kept before: their keys, shards, content hashes, sizes, vectors and pixel signatures, in the order
    they were met."""

    keys: list[str]
    shards: list[str]
    content_hashes: list[str]
    sizes: list[tuple[int, int]]
    vectors: np.ndarray
    signatures: list[PixelSignature]

    @classmethod
    def empty(cls, dim: int) -> SeenSamples:
        return cls([], [], [], [], np.empty((0, dim), np.float32), [])

    def __len__(self) -> int:
        return len(self.keys)

    def with_kept(self, samples: Sequence[EmbeddedSample], decisions: Sequence[SampleDecision],
                  signature_of: Callable[[int], PixelSignature | None]) -> SeenSamples:
        """These samples' kept ones added (one of each content; a kept sample whose pixels cannot be read again is
        left out, so that nothing is ever judged on pixels that are not its own)."""
        known = set(self.content_hashes)
        keys, shards, hashes = list(self.keys), list(self.shards), list(self.content_hashes)
        sizes, signatures, vectors = list(self.sizes), list(self.signatures), [self.vectors]
        for number, (sample, decision) in enumerate(zip(samples, decisions)):
            if not decision.keep or sample.vector is None or sample.content_hash in known:
                continue
            look = signature_of(number)
            if look is None:
                continue
            assert sample.content_hash is not None
            known.add(sample.content_hash)
            keys.append(sample.key)
            shards.append(sample.shard)
            hashes.append(sample.content_hash)
            sizes.append((sample.width or 0, sample.height or 0))
            signatures.append(look)
            vectors.append(sample.vector[None, :].astype(np.float32))
        return SeenSamples(keys, shards, hashes, sizes, np.concatenate(vectors), signatures)


@dataclass(frozen=True)
class SampleDecisions:
    """Each sample's decision, in the order given, and the look-alike check of the new samples."""

    rows: list[SampleDecision]
    lookalikes: LookalikeCheck


def decide_samples(samples: Sequence[EmbeddedSample], threshold: float,
                   signature_of: Callable[[int], PixelSignature | None], seen: SeenSamples | None = None,
                   lookalikes: bool = False, max_pairs: int | None = None) -> SampleDecisions:
    """Keep or duplicate for each of `samples` (in order), against the `seen` ones and among themselves.
    `signature_of(i)` reads the pixel signature of `samples[i]` (None when its bytes cannot be read again: then it
    is never judged the same on pixels)."""
    seen = seen if seen is not None and len(seen) else None
    first_new = len(seen) if seen is not None else 0
    candidates: list[Candidate] = []
    contents: dict[str, int] = {}
    owners: list[list[Candidate]] = []
    vectors: list[np.ndarray] = []
    looks: dict[int, PixelSignature | None] = {}

    def add(ordinal: int, content_hash: str, size: tuple[int, int], vector: np.ndarray) -> None:
        member = Candidate(str(ordinal), size[0], size[1], ordinal, None, str(ordinal), 0, content_hash)
        candidates.append(member)
        row = contents.setdefault(content_hash, len(owners))
        if row == len(owners):
            owners.append([])
            vectors.append(vector)
        owners[row].append(member)

    if seen is not None:
        for number, (digest, size) in enumerate(zip(seen.content_hashes, seen.sizes)):
            add(number, digest, size, seen.vectors[number])
            looks[number] = seen.signatures[number]
    for number, sample in enumerate(samples):
        if sample.vector is not None and sample.content_hash is not None:
            add(first_new + number, sample.content_hash, (sample.width or 0, sample.height or 0), sample.vector)
    matrix = np.stack(vectors).astype(np.float32) if vectors else np.empty((0, 1), np.float32)
    new_rows = sorted({contents[member.content_hash] for member in candidates  # type: ignore[index]
                       if int(member.path) >= first_new})
    check = nearest_share(matrix[new_rows], threshold, lookalikes, seed=len(new_rows)) if new_rows else \
        LookalikeCheck(0.0, 0, 0, lookalikes)
    pairs = NO_PAIRS if check.exact_only else None

    def identify(path: str) -> FileIdentity:
        return FileIdentity(path, False, 0, int(path))

    def read(member: Candidate) -> PixelSignature | None:
        ordinal = int(member.path)
        if ordinal not in looks:
            looks[ordinal] = signature_of(ordinal - first_new)
        return looks[ordinal]

    groups: list[DuplicateGroup] = []
    if seen is not None:
        rules = GroupingRules(SAMPLE_RULES, protected=lambda path: int(path) < first_new)
        groups += duplicate_groups(matrix, owners, threshold, identify, pairs, rules, max_pairs, read)
    grouped = {member.path for group in groups for member in group.others}
    rest = [[member for member in members if int(member.path) >= first_new and member.path not in grouped]
            for members in owners]
    used = [row for row, members in enumerate(rest) if members]
    if used:
        subset_pairs = None if pairs is None else NO_PAIRS
        groups += duplicate_groups(matrix[used], [rest[row] for row in used], threshold, identify, subset_pairs,
                                   GroupingRules(SAMPLE_RULES), max_pairs, read)
    return SampleDecisions(_rows(samples, groups, seen, first_new), check)


def _rows(samples: Sequence[EmbeddedSample], groups: list[DuplicateGroup], seen: SeenSamples | None,
          first_new: int) -> list[SampleDecision]:
    def key_of(ordinal: int) -> str:
        return seen.keys[ordinal] if seen is not None and ordinal < first_new else samples[ordinal - first_new].key

    decided: dict[int, SampleDecision] = {}
    for number, group in enumerate(groups, 1):
        keeper = int(group.keeper.path)
        if keeper >= first_new:
            decided[keeper] = SampleDecision(key_of(keeper), samples[keeper - first_new].shard, number, True)
        for other, distance, copy in zip(group.others, group.distances, group.copies):
            ordinal = int(other.path)
            decided[ordinal] = SampleDecision(key_of(ordinal), samples[ordinal - first_new].shard, number, False,
                                              key_of(keeper), round(float(distance), DISTANCE_DIGITS), copy)
    rows = []
    for number, sample in enumerate(samples):
        if sample.vector is None:
            rows.append(SampleDecision(sample.key, sample.shard, keep=None, status=STATUS_FAILED,
                                       error=sample.error or "not embedded"))
        else:
            rows.append(decided.get(first_new + number, SampleDecision(sample.key, sample.shard)))
    return rows


def signature_of_bytes(data: bytes | None) -> PixelSignature | None:
    """The pixel rule's signature of encoded image bytes, or None for none that decode."""
    if data is None:
        return None
    try:
        return signature(data)
    except DecodeError:
        return None
