"""The Python API: an index (or just a model) opened once, for queries and same/different decisions.

    from retrieval import open_collection
    photos = open_collection("~/Pictures/.simsearch")
    photos.query(["new.jpg"], k=5)
    photos.verify("a.jpg", "b.jpg").same
    for group in photos.dedup():
        print(group.keeper.path, [other.path for other in group.others])
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from retrieval.calibration import DEFAULT_PRECISION, decide, level_at
from retrieval.calibration_store import StoredCalibration, latest_calibration
from retrieval.classify import Classification, nearest_classes
from retrieval.dedup import DuplicateGroup, DuplicateSearch, index_duplicates
from retrieval.keeper_rules import DEFAULT_RULES, parse_rules
from retrieval.sources.embed import embed_each, embed_files
from retrieval.embedding import Embedder, pick_device
from retrieval.errors import (CalibrationError, DecodeError, IndexNotFoundError, InputPathError, InvalidArgumentError,
                              ModelMismatchError)
from retrieval.faiss_factory import EXACT, new_faiss_index
from retrieval.file_identity import identify_file
from retrieval.index import SimilarityIndex, open_index
from retrieval.inputs import (path_argument, path_arguments, refuse_single_path, support_argument, threshold_argument)
from retrieval.locate import find_index_dir
from retrieval.model import EmbeddingModel, load_default_model
from retrieval.search import QueryResult, query_files
from retrieval.unit_distance import DISTANCE_DIGITS, distance_between, squared_l2_from_scores


STREAM_CANDIDATES = 8
"""Indexed neighbours a streamed input is compared with: the nearest that is another file than the input wins."""
ThresholdSource = Literal["given", "index calibration", "model calibration"]


@dataclass(frozen=True)
class ThresholdChoice:
    """The distance threshold a decision uses, where it came from, and that in words for a person."""

    threshold: float
    source: ThresholdSource
    precision: float | None
    """The precision level it was measured at (None for a given threshold, or an index calibration's criterion)."""
    recall: float | None
    """The recall measured at that precision level."""
    description: str

    def to_dict(self) -> dict[str, object]:
        return {"threshold": self.threshold, "threshold_source": self.source, "precision": self.precision}


@dataclass(frozen=True)
class StreamMatch:
    """One input of a streaming dedup: the image it duplicates (or None), or why it could not be read."""

    path: str
    duplicate_of: str | None
    distance: float | None
    error: str | None

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "duplicate_of": self.duplicate_of,
                "distance": None if self.distance is None else round(self.distance, DISTANCE_DIGITS),
                **({"error": self.error} if self.error is not None else {})}


@dataclass(frozen=True)
class Verdict:
    """Same or different at `threshold`; `margin` is `threshold - distance` (positive on the "same" side)."""

    same: bool
    distance: float
    threshold: float
    margin: float
    probability: float | None
    """The pairwise head's probability of "same", for a model trained with one."""
    choice: ThresholdChoice

    def to_dict(self) -> dict[str, object]:
        return {"same": self.same, "distance": round(self.distance, DISTANCE_DIGITS), **self.choice.to_dict(),
                "margin": round(self.margin, DISTANCE_DIGITS), "probability": self.probability}


class Collection:
    """An index directory with its model, or a bare model (then with an explicit threshold and no search)."""

    def __init__(self, index: SimilarityIndex | None, model: EmbeddingModel | None = None,
                 device: str | None = None) -> None:
        if index is None and model is None:
            raise IndexNotFoundError("a collection needs an index or a model")
        self.index = index
        self._model = model
        self._device = device
        self._embedder: Embedder | None = None

    @property
    def model(self) -> EmbeddingModel:
        """The model given, else the index's, else (for an index without images yet) the default model."""
        if self._model is None:
            assert self.index is not None
            served = self.index.served_model() is not None
            self._model = self.index.load_model() if served else load_default_model()
        return self._model

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder(self.model, pick_device(self._device))
        return self._embedder

    def embed_files(self, paths: Sequence[Path | str]) -> np.ndarray:
        """L2-normalised embeddings of image files, in one batch; raises `DecodeError` naming a bad file."""
        return embed_files(self.embedder, path_arguments(paths))

    def query(self, paths: Sequence[Path | str], k: int = 5) -> list[QueryResult]:
        """The k nearest indexed images of each file (a file that fails carries its error)."""
        return query_files(self._require_searchable_index(), self.embedder, paths, k)

    def calibration(self) -> StoredCalibration | None:
        """The latest calibration of this collection's model, if any (never one of another model)."""
        return None if self.index is None else latest_calibration(self.index, self.model.content_hash)

    def threshold_choice(self, threshold: float | None = None, precision: float | None = None) -> ThresholdChoice:
        """The threshold of a decision (`_choice`); `CalibrationError` when there is no calibration and no
        threshold."""
        choice = self._choice(threshold, precision)
        if choice is None:
            raise self._no_calibration()
        return choice

    def classify_threshold(self, threshold: float | None = None, precision: float | None = None
                           ) -> ThresholdChoice | None:
        """The threshold of `classify` (`_choice`): None when neither a threshold nor a precision is asked for and
        there is no calibration, and then every query gets its nearest class."""
        return self._choice(threshold, precision)

    def threshold(self, threshold: float | None = None, precision: float | None = None) -> float:
        """The threshold `threshold_choice` picks."""
        return self.threshold_choice(threshold, precision).threshold

    def _choice(self, threshold: float | None, precision: float | None) -> ThresholdChoice | None:
        """The first of: `threshold` (a finite distance of at least 0); the index's latest calibration of this
        model (its threshold by its criterion, or its level at `precision`); the model's shipped calibration at
        `precision` (default `DEFAULT_PRECISION`). `precision` must be a level that calibration measured; None
        when there is nothing to choose from and no precision was asked for."""
        if threshold is not None:
            if precision is not None:
                raise InvalidArgumentError("give a threshold or a precision, not both")
            return ThresholdChoice(threshold_argument(threshold), "given", None, None, "the given threshold")
        stored = self.calibration()
        if stored is not None:
            when = f"stored {stored.created_at:%Y-%m-%d}"
            if precision is None:
                return ThresholdChoice(stored.threshold, "index calibration", None, None,
                                       f"the index's calibration of this model ({stored.criterion}, {when})")
            level = level_at(stored.levels, precision, "the index's calibration of this model")
            return ThresholdChoice(level.threshold, "index calibration", level.precision, level.recall,
                                   f"the index's calibration at precision {level.precision:g} "
                                   f"(recall {level.recall:.3f}, {when})")
        shipped = self.model.calibration
        if shipped is not None:
            level = level_at(shipped.levels, DEFAULT_PRECISION if precision is None else precision,
                             "the model's shipped calibration")
            return ThresholdChoice(level.threshold, "model calibration", level.precision, level.recall,
                                   f"the model's shipped calibration at precision {level.precision:g} "
                                   f"(recall {level.recall:.3f}, measured on {shipped.measured_on})")
        if precision is not None:
            raise self._no_calibration()
        return None

    def _no_calibration(self) -> CalibrationError:
        return CalibrationError(f"no calibration for model {self.model.spec.name} ({self.model.content_hash[:12]}); "
                                "run `simsearch calibrate DATA` or give a threshold")

    def verify(self, first: Path | str, second: Path | str, threshold: float | None = None,
               precision: float | None = None) -> Verdict:
        """Whether two image files show the same thing, at the threshold `threshold_choice` picks."""
        choice = self.threshold_choice(threshold, precision)
        vectors = self.embed_files([first, second])
        return self.verdict(vectors[0], vectors[1], choice)

    def verdict(self, first: np.ndarray, second: np.ndarray, choice: ThresholdChoice) -> Verdict:
        """Same or different for two embeddings (of this collection's model) at `choice`'s threshold."""
        distance = distance_between(first, second)
        tensors = torch.from_numpy(np.stack([first, second])).to(self.embedder.device)
        probability = self.model.pair_probability(tensors[:1], tensors[1:])
        limit = choice.threshold
        return Verdict(decide(distance, limit), distance, limit, limit - distance,
                       None if probability is None else float(probability[0]), choice)

    def dedup(self, threshold: float | None = None, roots: Sequence[Path | str] | None = None,
              precision: float | None = None) -> list[DuplicateGroup]:
        """Near-duplicate groups among the indexed images (those under `roots` when given), at the threshold
        `threshold_choice` picks."""
        return self.find_duplicates(threshold, roots, precision).groups

    def find_duplicates(self, threshold: float | None = None, roots: Sequence[Path | str] | None = None,
                        precision: float | None = None, keep: str = DEFAULT_RULES,
                        reference: Path | str | None = None, max_pairs: int | None = None) -> DuplicateSearch:
        """As `dedup`, with how the pairs were found (exactly, or in a large index by a kNN graph whose pair recall
        is measured); `keep`: the keeper rules in order (`retrieval.keeper_rules`); `reference`: a folder whose
        images are protected (only images outside it are proposed, each as a duplicate of one inside);
        `max_pairs`: a bound on the close pairs, beyond which the threshold is refused (`InvalidArgumentError`)
        before the memory they need is taken."""
        index = self._require_searchable_index()
        rules = parse_rules(keep)
        limit = self.threshold(threshold, precision)
        under = [] if roots is None else [os.path.abspath(Path(root).expanduser())
                                          for root in path_arguments(roots, "roots")]
        protected = None if reference is None else os.path.abspath(Path(path_argument(reference, "reference"))
                                                                  .expanduser())
        return index_duplicates(index, limit, under or None, rules, protected, max_pairs)

    def decisions(self) -> list[dict[str, object]]:
        """Every decision: "not duplicates" (the two contents) and "keep" (a content), when, and the indexed
        paths holding each now."""
        index = self._require_index()
        paths: dict[str, list[str]] = {}
        for row in index.store.indexed_images():
            paths.setdefault(row.content_hash, []).append(row.path)
        apart = [{"decision": "not-duplicates", "first_hash": first, "second_hash": second,
                  "decided_at": when.isoformat(), "first_paths": sorted(paths.get(first, [])),
                  "second_paths": sorted(paths.get(second, []))}
                 for first, second, when in index.store.distinct_pairs()]
        kept = [{"decision": "keep", "content_hash": digest, "decided_at": when.isoformat(),
                 "paths": sorted(paths.get(digest, []))} for digest, when in index.store.chosen_keepers()]
        return apart + kept

    def mark_kept(self, path: Path | str) -> bool:
        """Record that the indexed image at `path` keeps in its duplicate groups (by content: after moves and
        re-indexing, for every later dedup, before the keeper rules); whether the decision is new."""
        return self._require_index().store.mark_kept(self._content_of(path))

    def _content_of(self, path: Path | str) -> str:
        absolute = os.path.abspath(Path(path_argument(path, "path")).expanduser())
        row = self._require_index().store.known_images([absolute], 0, everything=False).get(absolute)
        if row is None or row.content_hash is None:
            raise InputPathError(f"not an indexed image: {path}")
        return row.content_hash

    def mark_distinct(self, pairs: Sequence[tuple[Path | str, Path | str]]) -> int:
        """Record that each pair of indexed images is not a duplicate (by content: it holds after moves and
        re-indexing, for every later dedup); how many decisions are new. `InputPathError` for a path that is not
        indexed."""
        index = self._require_index()
        hashes = []
        for pair in pairs:
            digests = [self._content_of(path) for path in pair]
            if digests[0] == digests[1]:
                raise InvalidArgumentError(f"{pair[0]} and {pair[1]} hold the same content: exact copies are "
                                           "duplicates by definition")
            hashes.append((digests[0], digests[1]))
        return index.store.mark_distinct(hashes)

    def stream_duplicates(self, paths: Iterable[str], threshold: float | None = None,
                          precision: float | None = None) -> Iterator[StreamMatch]:
        """For each path as it comes, the nearest earlier input or indexed image within the threshold
        (`threshold_choice`).

        Reads nothing ahead, so a pipeline gets each answer as soon as its line is in; writes nothing. The
        arguments, the index and the threshold are checked at the call, before the first path is read.
        """
        refuse_single_path(paths)
        if self.index is not None:
            self._require_searchable_index()
        return self._stream_duplicates(paths, self.threshold(threshold, precision))

    def _stream_duplicates(self, paths: Iterable[str], limit: float) -> Iterator[StreamMatch]:
        """Each input against the indexed images and the earlier inputs kept so far. An input reported as a
        duplicate is proposed for deletion, so it is never the original of a later one (two copies given one
        after the other are not each other's duplicates), and neither is the input's own file nor an indexed
        path that no longer holds the file indexed there."""
        seen = new_faiss_index(self.model.embedding_dim, EXACT)
        seen_files: dict[str, int] = {}
        seen_paths: list[str] = []
        proposed: set[str] = set()
        for given in paths:
            raw = path_argument(given, "each of paths")
            path = os.path.abspath(Path(raw).expanduser())
            try:
                vector = self.embed_files([path])
            except DecodeError as exc:
                yield StreamMatch(raw, None, None, str(exc))
                continue
            identity = identify_file(path)
            own = identity.file_id if identity is not None else path
            candidates = self._indexed_matches(vector, {own} | proposed)
            if seen.ntotal:
                scores, found = seen.search(vector, min(2, seen.ntotal))
                candidates += [(float(distance), seen_paths[int(row)])
                               for distance, row in zip(squared_l2_from_scores(scores[0]), found[0])
                               if row != seen_files.get(own)]
            best = min(candidates, default=None)
            if best is not None and decide(best[0], limit):
                proposed.add(own)
                yield StreamMatch(raw, best[1], best[0], None)
                continue
            yield StreamMatch(raw, None, None, None)
            if own not in seen_files:
                seen_files[own] = len(seen_paths)
                seen.add(vector)
                seen_paths.append(path)

    def _indexed_matches(self, vector: np.ndarray, excluded: set[str]) -> list[tuple[float, str]]:
        """The nearest indexed image, as (distance, path), whose path still holds the file indexed there and
        whose file is none of `excluded` (file ids: the input's own, the inputs proposed for deletion)."""
        if self.index is None:
            return []
        for hit in self.index.search(vector, STREAM_CANDIDATES)[0]:
            identity = identify_file(hit.path)
            if (identity is not None and identity.file_id not in excluded
                    and identity.is_as_indexed(hit.file_id, hit.size, hit.mtime_ns)):
                return [(hit.distance, hit.path)]
        return []

    def classify(self, support: Mapping[str, Sequence[Path | str]], queries: Sequence[Path | str],
                 prototype: bool = False, threshold: float | None = None,
                 precision: float | None = None) -> list[Classification]:
        """The nearest support class of each query file (by nearest support image, or by class mean with
        `prototype`); "unknown" (label None) beyond the threshold `classify_threshold` picks, if there is one."""
        asked = path_arguments(queries, "queries")
        support_argument(support)  # before anything is embedded, and even when no query can be
        vectors, failed = embed_each(self.embedder, asked)
        kept = [i for i in range(len(asked)) if i not in failed]
        found = dict(zip(kept, self.classify_vectors(support, vectors, [asked[i] for i in kept], prototype,
                                                     threshold, precision))) if kept else {}
        return [found.get(i) or Classification(query, None, None, None, None, failed[i])
                for i, query in enumerate(asked)]

    def classify_vectors(self, support: Mapping[str, Sequence[Path | str]], vectors: np.ndarray,
                         names: Sequence[str], prototype: bool = False, threshold: float | None = None,
                         precision: float | None = None) -> list[Classification]:
        """As `classify`, for queries already embedded (`vectors`, one row per name in `names`)."""
        members = support_argument(support)
        choice = self.classify_threshold(threshold, precision)
        limit = None if choice is None else choice.threshold
        classes = list(members)
        files = [path for name in classes for path in members[name]]
        labels = np.array([i for i, name in enumerate(classes) for _ in members[name]])
        support_vectors = self.embed_files(files)
        best, distances, deciding = nearest_classes(vectors, support_vectors, labels, prototype)
        results = []
        for row, name in enumerate(names):
            nearest = classes[int(best[row])]
            within = limit is None or decide(float(distances[row]), limit)
            results.append(Classification(name, nearest if within else None, nearest, float(distances[row]),
                                          None if deciding[row] < 0 else files[int(deciding[row])]))
        return results

    def _require_index(self) -> SimilarityIndex:
        if self.index is None:
            raise IndexNotFoundError("this needs an index: run `simsearch index PATH` first or pass --index")
        return self.index

    def _require_searchable_index(self) -> SimilarityIndex:
        """The index, when its vectors come from this collection's model: another model's embeddings (and
        threshold) mean nothing against them."""
        index = self._require_index()
        if self._model is not None:
            record = index.served_model()
            if record is not None and record.content_hash != self._model.content_hash:
                raise ModelMismatchError.between(index.root, (record.name, record.content_hash),
                                                 (self._model.spec.name, self._model.content_hash),
                                                 "search it with its own model")
        return index


def open_collection(path: Path | str | None = None, model: EmbeddingModel | None = None,
                    device: str | None = None, db: str | None = None) -> Collection:
    """Open the index at `path` (else `$SIMSEARCH_INDEX`, else `.simsearch/` here or above), its database at `db`
    (else `$SIMSEARCH_DB`, else the directory's `index.db`).

    With `model`, decisions use that model (and its own calibration) instead of the index's.
    """
    root = find_index_dir(Path(path).expanduser() if path is not None else None)
    if root is None:
        if model is None:
            raise IndexNotFoundError("no index found (looked for .simsearch/ here and in parent folders); "
                                     "run `simsearch index PATH` first or pass --index")
        return Collection(None, model, device)
    return Collection(open_index(root, db), model, device)
