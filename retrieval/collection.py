"""The Python API: an index (or just a model) opened once, for queries and same/different decisions.

    from retrieval import open_collection
    photos = open_collection("~/Pictures/.simsearch")
    photos.query(["new.jpg"], k=5)
    photos.verify("a.jpg", "b.jpg").same
    for group in photos.dedup():
        print(group.keeper.path, [other.path for other in group.others])
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from retrieval.decisions.calibration import DEFAULT_PRECISION, decide, level_at, stored_false_pairs
from retrieval.decisions.calibration_store import StoredCalibration, latest_calibration
from retrieval.decisions.classify import Classification, nearest_classes
from retrieval.decisions.dedup import DuplicateGroup, DuplicateSearch, index_duplicates
from retrieval.decisions.false_pairs import CollectionFalsePairs, collection_false_pairs
from retrieval.decisions.keeper_rules import DEFAULT_RULES, parse_rules
from retrieval.decisions.pixel_rule import (PixelJudgement, PixelSignature, indexed_signature, judge, same_by_rule,
                                            signature)
from retrieval.errors import (CalibrationError, DecodeError, IndexNotFoundError, InputPathError, InvalidArgumentError,
                              ModelError, ModelMismatchError)
from retrieval.index import SimilarityIndex, open_index
from retrieval.locate import find_index_dir
from retrieval.models.embedding import Embedder, pick_device
from retrieval.models.model import EmbeddingModel, load_default_model
from retrieval.models.model_spec import DEFAULT_MODEL_FILE, FalsePairRate, ShippedCalibration, read_model_header
from retrieval.sources.embed import embed_each, embed_files
from retrieval.sources.file_identity import identify_file
from retrieval.sources.inputs import (k_argument, path_argument, path_arguments, refuse_single_path, support_argument,
                                      threshold_argument)
from retrieval.vectors.faiss_factory import EXACT, new_faiss_index
from retrieval.vectors.search import QueryResult, query_files
from retrieval.vectors.unit_distance import DISTANCE_DIGITS, distance_between, squared_l2_from_scores


STREAM_CANDIDATES = 8
"""Indexed neighbours a streamed input is compared with: the nearest that is another file than the input wins."""
_log = logging.getLogger(__name__)
ThresholdSource = Literal["given", "index calibration", "model calibration"]


@dataclass(frozen=True)
class ThresholdChoice:
    """The distance threshold a decision uses, where it came from, and that in words for a person."""

    threshold: float
    source: ThresholdSource
    precision: float | None
    """The precision level it was measured at (None for a given threshold, or an index calibration's criterion)."""
    recall: float | None
    """The recall measured at that precision level (or at the shipped default)."""
    description: str
    false_pairs: tuple[FalsePairRate, ...] = ()
    """The model's false-pair curve (the index calibration's where it has one, else the shipped one's): what the
    threshold means in a collection (`retrieval.decisions.false_pairs.collection_false_pairs`); empty where none is
    known."""
    false_pairs_measured_on: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"threshold": self.threshold, "threshold_source": self.source, "precision": self.precision}

    def in_collection(self, images: int) -> CollectionFalsePairs | None:
        """The false pairs to expect at this threshold among `images` distinct images, where a curve speaks for
        it."""
        return collection_false_pairs(self.false_pairs, self.threshold, images, self.false_pairs_measured_on)


@dataclass(frozen=True)
class StreamMatch:
    """One input of a streaming dedup: the image it duplicates (or None), or why it could not be read."""

    path: str
    duplicate_of: str | None
    distance: float | None
    error: str | None
    pixels: PixelJudgement | None = None
    """How the pixels of the two compared, where either is tiny or flat (`retrieval.decisions.pixel_rule`)."""

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "duplicate_of": self.duplicate_of,
                "distance": None if self.distance is None else round(self.distance, DISTANCE_DIGITS),
                **({"pixels": self.pixels.to_dict()} if self.pixels is not None else {}),
                **({"error": self.error} if self.error is not None else {})}


@dataclass(frozen=True)
class Verdict:
    """Same or different at `threshold` (and, where either image is tiny or flat, by their pixels: `pixels`);
    `margin` is `threshold - distance` (positive on the "same" side)."""

    same: bool
    distance: float
    threshold: float
    margin: float
    probability: float | None
    """The pairwise head's probability of "same", for a model trained with one."""
    choice: ThresholdChoice
    pixels: PixelJudgement | None = None

    def to_dict(self) -> dict[str, object]:
        return {"same": self.same, "distance": round(self.distance, DISTANCE_DIGITS), **self.choice.to_dict(),
                "margin": round(self.margin, DISTANCE_DIGITS), "probability": self.probability,
                "judged_on": "embedding" if self.pixels is None else "pixels",
                **({"pixels": self.pixels.to_dict()} if self.pixels is not None else {})}


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
        """The k nearest indexed images of each file (a file that fails carries its error), by the index's own
        model; `IndexNotFoundError` while the index holds no images."""
        index = self._require_served_index()
        return query_files(index, self.embedder, paths, k)

    def query_vector(self, name: str, vector: np.ndarray, k: int = 5) -> QueryResult:
        """The k nearest indexed images of an embedding already made by this collection's model (an upload the
        server embedded), reported under `name`."""
        model = None if self._model is None else (self._model.spec.name, self._model.content_hash)
        [neighbours] = self._require_index().search(vector[None], k_argument(k), model)
        return QueryResult(name, neighbours)

    def query_indexed(self, path: str, k: int = 5) -> QueryResult | None:
        """The k nearest indexed images of the image indexed at `path` (its stored vector: nothing decoded, no
        model loaded); None when no image is indexed there."""
        k = k_argument(k)
        index = self._require_index()
        stored = index.vector_of_path(path)
        if stored is None:
            return None
        [neighbours] = index.search(np.frombuffer(stored, dtype=np.float32)[None], k)
        return QueryResult(path, neighbours)

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
        model (its threshold by its criterion, or its level at `precision`); the model's shipped calibration: at
        `precision`, else its default (`FalsePairCurve.default_threshold`, else the level at `DEFAULT_PRECISION`
        for a calibration of precision levels alone). `precision` must be a level that calibration measured; None
        when there is nothing to choose from and no precision was asked for. The choice carries the false-pair
        curve of the index's calibration where it has one, else of the shipped one."""
        if threshold is not None and precision is not None:
            raise InvalidArgumentError("give a threshold or a precision, not both")
        try:
            model_hash, shipped = self._model_facts()
        except ModelError:
            if threshold is None:
                raise
            return self._picked(threshold, None, None, None)  # the vectors decide; the model file is not needed
        stored = None if self.index is None else latest_calibration(self.index, model_hash)
        choice = self._picked(threshold, precision, stored, shipped)
        if choice is None:
            return None
        if stored is not None and stored_false_pairs(stored.metrics):
            return replace(choice, false_pairs=stored_false_pairs(stored.metrics),
                           false_pairs_measured_on="the different pairs of the index's calibration")
        if shipped is not None and shipped.false_pairs is not None:
            return replace(choice, false_pairs=shipped.false_pairs.points,
                           false_pairs_measured_on=shipped.false_pairs.measured_on)
        return choice

    def _model_facts(self) -> tuple[str, ShippedCalibration | None]:
        """This collection's model's content hash and shipped calibration; read from the model file's header
        while the model is not loaded (a decision at a given threshold loads no model)."""
        if self._model is None and self.index is not None:
            record = self.index.served_model()
            path = DEFAULT_MODEL_FILE if record is None else self.index.model_path(record.content_hash)
            header = read_model_header(path)
            return header.content_hash, header.calibration
        return self.model.content_hash, self.model.calibration

    def _picked(self, threshold: float | None, precision: float | None, stored: StoredCalibration | None,
                shipped: ShippedCalibration | None) -> ThresholdChoice | None:
        if threshold is not None:
            return ThresholdChoice(threshold_argument(threshold), "given", None, None, "the given threshold")
        if stored is not None:
            when = f"stored {stored.created_at:%Y-%m-%d}"
            if precision is None:
                return ThresholdChoice(stored.threshold, "index calibration", None, None,
                                       f"the index's calibration of this model ({stored.criterion}, {when})")
            level = level_at(stored.levels, precision, "the index's calibration of this model")
            return ThresholdChoice(level.threshold, "index calibration", level.precision, level.recall,
                                   f"the index's calibration at precision {level.precision:g} "
                                   f"(recall {level.recall:.3f}, {when})")
        if shipped is not None and precision is None and shipped.false_pairs is not None:
            default = shipped.false_pairs.default
            return ThresholdChoice(default.threshold, "model calibration", None, default.recall,
                                   f"the model's shipped default (recall {default.recall:.3f} of edited copies in "
                                   "edit families it never trained on)")
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
        """Whether two image files show the same thing, at the threshold `threshold_choice` picks, by the rule
        dedup decides with (`retrieval.decisions.pixel_rule` for tiny and flat images)."""
        choice = self.threshold_choice(threshold, precision)
        files = path_arguments([first, second])
        vectors = self.embed_files(files)
        return self.verdict(vectors[0], vectors[1], choice, (signature(files[0]), signature(files[1])))

    def verdict(self, first: np.ndarray, second: np.ndarray, choice: ThresholdChoice,
                looks: tuple[PixelSignature, PixelSignature]) -> Verdict:
        """Same or different for two embeddings (of this collection's model) at `choice`'s threshold, and where
        either image is tiny or flat by their pixels (`looks`: the two images'
        `retrieval.decisions.pixel_rule.signature`)."""
        distance = distance_between(first, second)
        tensors = torch.from_numpy(np.stack([first, second])).to(self.embedder.device)
        probability = self.model.pair_probability(tensors[:1], tensors[1:])
        limit = choice.threshold
        pixels = judge(*looks)
        return Verdict(same_by_rule(decide(distance, limit), pixels), distance, limit, limit - distance,
                       None if probability is None else float(probability[0]), choice, pixels)

    def dedup(self, threshold: float | None = None, roots: Sequence[Path | str] | None = None,
              precision: float | None = None, lookalikes: bool = False) -> list[DuplicateGroup]:
        """Near-duplicate groups among the indexed images (those under `roots` when given), at the threshold
        `threshold_choice` picks. In a collection of look-alikes (`retrieval.decisions.lookalikes`) only exact copies,
        said as a warning (`logging`, under `retrieval`), unless `lookalikes` asks for near-duplicates too."""
        found = self.find_duplicates(threshold, roots, precision, lookalikes=lookalikes)
        if found.lookalikes.lookalikes:
            _log.warning("%s", found.lookalikes.message())
        return found.groups

    def find_duplicates(self, threshold: float | None = None, roots: Sequence[Path | str] | None = None,
                        precision: float | None = None, keep: str = DEFAULT_RULES,
                        reference: Path | str | None = None, max_pairs: int | None = None,
                        lookalikes: bool = False) -> DuplicateSearch:
        """As `dedup`, with how the pairs were found (exactly, or in a large index by a kNN graph whose pair recall
        is measured) and the look-alike check (`DuplicateSearch.lookalikes`; nothing is logged);
        `keep`: the keeper rules in order (`retrieval.decisions.keeper_rules`); `reference`: a folder whose
        images are protected (only images outside it are proposed, each as a duplicate of one inside);
        `max_pairs`: a bound on the close pairs, beyond which the threshold is refused (`InvalidArgumentError`)
        before the memory they need is taken; `lookalikes`: near-duplicates even in a collection of
        look-alikes."""
        index = self._require_searchable_index()
        rules = parse_rules(keep)
        limit = self.threshold(threshold, precision)
        under = [] if roots is None else [os.path.abspath(Path(root).expanduser())
                                          for root in path_arguments(roots, "roots")]
        protected = None if reference is None else os.path.abspath(Path(path_argument(reference, "reference"))
                                                                  .expanduser())
        return index_duplicates(index, limit, under or None, rules, protected, max_pairs, lookalikes)

    def decisions(self) -> list[dict[str, object]]:
        """Every decision: "not duplicates" (the two contents) and "keep" (a content), when, and the indexed
        paths holding each now."""
        index = self._require_index()
        paths: dict[str, list[str]] = {}
        for row in index.indexed_images():
            paths.setdefault(row.content_hash, []).append(row.path)
        apart = [{"decision": "not-duplicates", "first_hash": first, "second_hash": second,
                  "decided_at": when.isoformat(), "first_paths": sorted(paths.get(first, [])),
                  "second_paths": sorted(paths.get(second, []))}
                 for first, second, when in index.distinct_pairs()]
        kept = [{"decision": "keep", "content_hash": digest, "decided_at": when.isoformat(),
                 "paths": sorted(paths.get(digest, []))} for digest, when in index.chosen_keepers()]
        return apart + kept

    def mark_kept(self, path: Path | str) -> bool:
        """Record that the indexed image at `path` keeps in its duplicate groups (by content: after moves and
        re-indexing, for every later dedup, before the keeper rules); whether the decision is new."""
        return self._require_index().mark_kept(self._content_of(path))

    def _content_of(self, path: Path | str) -> str:
        absolute = os.path.abspath(Path(path_argument(path, "path")).expanduser())
        row = self._require_index().known_images([absolute], 0, everything=False).get(absolute)
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
        return index.mark_distinct(hashes)

    def remove(self, paths: Sequence[Path | str]) -> tuple[int, list[str]]:
        """Forget the indexed images at these paths (made absolute; the files themselves are never touched): how
        many were forgotten, and which of the paths held none."""
        absolute = [str(Path(path).expanduser().absolute()) for path in path_arguments(paths, "paths")]
        return self._require_index().forget_paths(absolute)

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
        path that no longer holds the file indexed there. The nearest within the limit is a duplicate by dedup's
        rule: where either image is tiny or flat, only if their pixels agree (`retrieval.decisions.pixel_rule`)."""
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
                candidates += [(float(distance), seen_paths[int(row)], _file_signature(seen_paths[int(row)]))
                               for distance, row in zip(squared_l2_from_scores(scores[0]), found[0])
                               if row != seen_files.get(own)]
            best = min(candidates, key=lambda candidate: candidate[:2], default=None)
            if best is not None and decide(best[0], limit):
                pixels = judge(_file_signature(path)(), best[2]())
                if same_by_rule(True, pixels):
                    proposed.add(own)
                    yield StreamMatch(raw, best[1], best[0], None, pixels)
                    continue
            yield StreamMatch(raw, None, None, None)
            if own not in seen_files:
                seen_files[own] = len(seen_paths)
                seen.add(vector)
                seen_paths.append(path)

    def _indexed_matches(self, vector: np.ndarray, excluded: set[str]
                         ) -> list[tuple[float, str, Callable[[], PixelSignature | None]]]:
        """The nearest indexed image, as (distance, path, how to read its pixel signature), whose path still holds
        the file indexed there and whose file is none of `excluded` (file ids: the input's own, the inputs
        proposed for deletion)."""
        if self.index is None:
            return []
        for hit in self.index.search(vector, STREAM_CANDIDATES)[0]:
            identity = identify_file(hit.path)
            if (identity is not None and identity.file_id not in excluded
                    and identity.is_as_indexed(hit.file_id, hit.size, hit.mtime_ns)):
                return [(hit.distance, hit.path,
                         lambda hit=hit: indexed_signature(hit.path, hit.file_id, hit.size, hit.mtime_ns))]
        return []

    def classify(self, support: Mapping[str, Sequence[Path | str]], queries: Sequence[Path | str],
                 prototype: bool = False, threshold: float | None = None,
                 precision: float | None = None) -> list[Classification]:
        """The nearest support class of each query file (by nearest support image, or by class mean with
        `prototype`); "unknown" (label None) beyond the threshold `classify_threshold` picks, if there is one, or
        where the query or the support image that decides is tiny or flat and their pixels do not agree
        (`retrieval.decisions.pixel_rule`, as dedup decides)."""
        asked = path_arguments(queries, "queries")
        support_argument(support)  # before anything is embedded, and even when no query can be
        vectors, failed = embed_each(self.embedder, asked)
        kept = [i for i in range(len(asked)) if i not in failed]
        looks = [_file_signature(asked[i]) for i in kept]
        found = dict(zip(kept, self.classify_vectors(support, vectors, [asked[i] for i in kept], prototype,
                                                     threshold, precision, looks=looks))) if kept else {}
        return [found.get(i) or Classification(query, None, None, None, None, failed[i])
                for i, query in enumerate(asked)]

    def classify_vectors(self, support: Mapping[str, Sequence[Path | str]], vectors: np.ndarray,
                         names: Sequence[str], prototype: bool = False, threshold: float | None = None,
                         precision: float | None = None, *,
                         looks: Sequence[Callable[[], PixelSignature | None]]) -> list[Classification]:
        """As `classify`, for queries already embedded (`vectors`, one row per name in `names`); `looks[i]` reads
        query i's pixel signature (`retrieval.decisions.pixel_rule.signature`), for the pixel rule."""
        members = support_argument(support)
        choice = self.classify_threshold(threshold, precision)
        limit = None if choice is None else choice.threshold
        classes = list(members)
        files = [path for name in classes for path in members[name]]
        labels = np.array([i for i, name in enumerate(classes) for _ in members[name]])
        support_vectors = self.embed_files(files)
        best, distances, deciding = nearest_classes(vectors, support_vectors, labels, prototype)
        support_looks: dict[int, PixelSignature | None] = {}

        def support_look(row: int) -> PixelSignature | None:
            if row not in support_looks:
                support_looks[row] = _file_signature(files[row])()
            return support_looks[row]

        results = []
        for row, name in enumerate(names):
            nearest = classes[int(best[row])]
            within, pixels = limit is None or decide(float(distances[row]), limit), None
            if limit is not None and within:
                look = looks[row]()
                if deciding[row] >= 0:
                    pixels = judge(look, support_look(int(deciding[row])))
                elif look is None or look.why is not None:  # by class mean: a tiny or flat query, on its class
                    pixels = _best_judgement([judge(look, support_look(int(i)))
                                              for i in np.flatnonzero(labels == best[row])])
                within = same_by_rule(within, pixels)
            results.append(Classification(name, nearest if within else None, nearest, float(distances[row]),
                                          None if deciding[row] < 0 else files[int(deciding[row])], pixels=pixels))
        return results

    def _require_index(self) -> SimilarityIndex:
        if self.index is None:
            raise IndexNotFoundError("this needs an index: run `simsearch index PATH` first or pass --index")
        return self.index

    def _require_served_index(self) -> SimilarityIndex:
        """The searchable index, once it serves a model (holds images): before, there is nothing to search and no
        model of its own to embed with."""
        index = self._require_searchable_index()
        if index.served_model() is None:
            raise IndexNotFoundError(f"the index at {index.root} holds no images yet")
        return index

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


def _best_judgement(judgements: list[PixelJudgement | None]) -> PixelJudgement | None:
    """Of a tiny or flat query's judgements against the images of a class: one that agrees, else the nearest."""
    found = [judgement for judgement in judgements if judgement is not None]
    return min(found, key=lambda j: (not j.agree, np.inf if j.difference is None else j.difference), default=None)


def _file_signature(path: str) -> Callable[[], PixelSignature | None]:
    """How to read the pixel signature of a file given to a streaming dedup (None when it no longer decodes)."""
    def read() -> PixelSignature | None:
        try:
            return signature(path)
        except DecodeError:
            return None
    return read


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


def open_for_classify(path: Path | str | None = None, model: EmbeddingModel | None = None,
                      device: str | None = None, db: str | None = None) -> Collection:
    """The collection `classify` decides with: as `open_collection`, else (no index found, and neither `path` nor
    `db` named one) the default model alone, which needs no index to compare a query with its support images."""
    try:
        return open_collection(path, model, device, db)
    except IndexNotFoundError:
        if path is not None or db is not None:
            raise
        return Collection(None, load_default_model(), device)
