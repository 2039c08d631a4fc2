"""What a model file says about its model without loading it: the spec, the content hash it was saved with, and the
calibration it ships with, if any.

Nothing here imports torch, so that the indexer can start decoding files for a model while torch is still
being imported.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from retrieval.errors import ModelError
from retrieval.sources.content_hash import is_content_hash
from retrieval.sources.images import Preprocessing, is_integer, shown_value

FORMAT_VERSION = 1
PRETRAINED_WEIGHTS = "imagenet"
FILE_WEIGHTS = "file"
BACKBONES = ("efficientnet-lite0", "small-cnn")
Pooling = Literal["mean", "gem", "regional-gem"]
POOLINGS: tuple[str, ...] = get_args(Pooling)
"""How efficientnet-lite0 pools its 7x7 feature map: the mean, generalised mean (GeM, Radenovic et al.), or the
sum of the L2-normalised GeM of the whole map and of five regions (R-MAC's regions, Tolias et al.)."""
DEFAULT_GEM_P = 3.0
MAX_GEM_P = 16.0
MAX_SCALES = 4
STAGE_COUNT = 7
"""EfficientNet-Lite0's stages; `trained_from_stage` 7 means only the 1x1 head convolution is trained."""
HEADS = ("identity", "linear")
SMALL_CNN_CHANNELS = [64, 64, 64, 64]
"""The small-cnn blocks when the spec names none."""
MAX_NAME_LENGTH = 256
MAX_EMBEDDING_DIM = 65536
MAX_CHANNELS = 4096
_REQUIRED_FIELDS = {"format", "name", "backbone", "backbone_weights", "head", "embedding_dim", "preprocessing"}
_OPTIONAL_FIELDS = {"backbone_options", "pair_head"}
DEFAULT_MODEL_FILE = Path(__file__).resolve().parents[1] / "weights" / "photo-default.safetensors"
"""The model `simsearch index` uses for a new index (`retrieval.models.model.load_default_model`)."""
V3_MODEL_FILE = DEFAULT_MODEL_FILE.with_name("photo-default-v3.safetensors")
"""photo-default-v3, the default before the triplet-trained one (`--model default-v3`)."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything but the tensors needed to rebuild a model.

    Checked whole on construction (`ModelError`): the known names, every size within bounds, a structure that
    can be built. A model file's spec can say anything, and nothing may be built from it before this.
    """

    name: str
    backbone: str
    embedding_dim: int
    preprocessing: Preprocessing
    head: str = "identity"
    backbone_weights: str = FILE_WEIGHTS
    backbone_options: dict[str, object] = field(default_factory=dict)
    pair_head: bool = False
    """Whether the model carries a pairwise head `sigmoid(w.|h1-h2| + b)` that scores pairs of embeddings."""

    def __post_init__(self) -> None:
        if not (isinstance(self.name, str) and 1 <= len(self.name) <= MAX_NAME_LENGTH):
            raise ModelError(f"name must be a string of 1 to {MAX_NAME_LENGTH} characters "
                             f"(got {shown_value(self.name)})")
        _require_choice("backbone", self.backbone, BACKBONES)
        _require_choice("head", self.head, HEADS)
        _require_choice("backbone_weights", self.backbone_weights, (FILE_WEIGHTS, PRETRAINED_WEIGHTS))
        _require_int("embedding_dim", self.embedding_dim, MAX_EMBEDDING_DIM)
        if not isinstance(self.preprocessing, Preprocessing):
            raise ModelError(f"preprocessing must be a Preprocessing (got {shown_value(self.preprocessing)})")
        if not isinstance(self.pair_head, bool):
            raise ModelError(f"pair_head must be true or false (got {shown_value(self.pair_head)})")
        if not isinstance(self.backbone_options, dict):
            raise ModelError(f"backbone_options must be a JSON object (got {shown_value(self.backbone_options)})")
        if self.backbone == "small-cnn":
            self._check_small_cnn()
        else:
            self._check_efficientnet()

    def _check_small_cnn(self) -> None:
        options = self.backbone_options
        _require_known_options(options, {"channels", "out_dim", "embedding_bn"})
        channels = options.get("channels", SMALL_CNN_CHANNELS)
        if not (isinstance(channels, list) and channels
                and all(is_integer(c) and 1 <= c <= MAX_CHANNELS for c in channels)):
            raise ModelError(f"backbone_options.channels must be a non-empty list of integers from 1 to "
                             f"{MAX_CHANNELS} (got {shown_value(channels)})")
        _require_int("backbone_options.out_dim", options.get("out_dim", self.embedding_dim), MAX_EMBEDDING_DIM)
        if not isinstance(options.get("embedding_bn", True), bool):
            raise ModelError(f"backbone_options.embedding_bn must be true or false "
                             f"(got {shown_value(options['embedding_bn'])})")
        width, height = self.preprocessing.size
        if width != height:
            raise ModelError(f"the small-cnn backbone takes square inputs (preprocessing size {width}x{height})")
        if width >> len(channels) < 1:
            raise ModelError(f"preprocessing size {width} is too small for {len(channels)} pooling blocks "
                             f"of the small-cnn backbone")
        if self.backbone_weights == PRETRAINED_WEIGHTS:
            raise ModelError(f"backbone_weights {PRETRAINED_WEIGHTS} needs the efficientnet-lite0 backbone")

    def _check_efficientnet(self) -> None:
        options = self.backbone_options
        _require_known_options(options, {"pooling", "gem_p", "scales", "trained_from_stage"})
        _require_choice("backbone_options.pooling", options.get("pooling", "mean"), POOLINGS)
        gem_p = options.get("gem_p", DEFAULT_GEM_P)
        if not (_is_real(gem_p) and 1.0 <= gem_p <= MAX_GEM_P):  # type: ignore[operator]
            raise ModelError(f"backbone_options.gem_p must be a number from 1 to {MAX_GEM_P:g} "
                             f"(got {shown_value(gem_p)})")
        scales = options.get("scales", [1.0])
        if not (isinstance(scales, list) and 1 <= len(scales) <= MAX_SCALES
                and all(_is_real(s) and 0.25 <= s <= 1.0 for s in scales)):  # type: ignore[operator]
            raise ModelError(f"backbone_options.scales must be a list of 1 to {MAX_SCALES} numbers from 0.25 to 1 "
                             f"(got {shown_value(scales)})")
        trained_from = options.get("trained_from_stage")
        if trained_from is not None:
            if self.backbone_weights != PRETRAINED_WEIGHTS:
                raise ModelError("backbone_options.trained_from_stage needs backbone_weights imagenet")
            if not (is_integer(trained_from) and 0 <= trained_from <= STAGE_COUNT):  # type: ignore[operator]
                raise ModelError(f"backbone_options.trained_from_stage must be an integer from 0 to {STAGE_COUNT} "
                                 f"(got {shown_value(trained_from)})")
        if self.preprocessing.mode != "RGB":
            raise ModelError(f"the efficientnet-lite0 backbone takes RGB input (preprocessing mode "
                             f"{self.preprocessing.mode})")

    def to_json(self) -> str:
        data: dict[str, object] = {
            "format": FORMAT_VERSION, "name": self.name, "backbone": self.backbone,
            "backbone_weights": self.backbone_weights, "backbone_options": self.backbone_options,
            "head": self.head, "embedding_dim": self.embedding_dim,
            "preprocessing": self.preprocessing.to_dict(),
        }
        if self.pair_head:
            data["pair_head"] = True
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        """The spec saved by `to_json`; `ModelError` naming the field at fault."""
        data = _parse_json(text, "the spec is")
        if not isinstance(data, dict):
            raise ModelError(f"the spec must be a JSON object (got {shown_value(data)})")
        fmt = data.get("format")
        if not is_integer(fmt) or fmt != FORMAT_VERSION:
            raise ModelError(f"unsupported model format {shown_value(fmt)}")
        missing = sorted(_REQUIRED_FIELDS - data.keys())
        if missing:
            raise ModelError(f"the spec lacks {', '.join(missing)}")
        unknown = sorted(data.keys() - _REQUIRED_FIELDS - _OPTIONAL_FIELDS)
        if unknown:
            raise ModelError(f"the spec has unknown fields {', '.join(map(shown_value, unknown))}")
        return cls(name=data["name"], backbone=data["backbone"], embedding_dim=data["embedding_dim"],
                   preprocessing=Preprocessing.from_dict(data["preprocessing"]), head=data["head"],
                   backbone_weights=data["backbone_weights"], backbone_options=data.get("backbone_options", {}),
                   pair_head=data.get("pair_head", False))


def _require_int(name: str, value: object, top: int) -> None:
    if not (is_integer(value) and 1 <= value <= top):  # type: ignore[operator]
        raise ModelError(f"{name} must be an integer from 1 to {top} (got {shown_value(value)})")


def _parse_json(text: str, subject: str) -> object:
    """`text` parsed as JSON; `ModelError` ("{subject} not JSON: ...") for anything else."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ModelError(f"{subject} not JSON: {exc}") from exc


def _require_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ModelError(f"{name} must be one of {', '.join(choices)} (got {shown_value(value)})")


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require_known_options(options: dict[str, object], known: set[str]) -> None:
    unknown = sorted(options.keys() - known)
    if unknown:
        raise ModelError(f"backbone_options has unknown fields {', '.join(map(shown_value, unknown))}")


MAX_DISTANCE = 4.0
"""The largest squared L2 distance between two L2-normalised embeddings."""
MAX_LEVELS = 32
MAX_MEASURED_ON_LENGTH = 256
MAX_CURVE_POINTS = 128
_LEVEL_FIELDS = {"precision", "threshold", "recall"}
_CALIBRATION_FIELDS = {"levels", "measured_on"}
_OPTIONAL_CALIBRATION_FIELDS = {"false_pairs"}
_POINT_FIELDS = {"threshold", "fpr", "fpr_upper", "recall"}
_CURVE_FIELDS = {"points", "measured_on", "default_threshold"}


@dataclass(frozen=True)
class PrecisionLevel:
    """A threshold measured at a precision level: of the pairs at most `threshold` apart (squared L2), a share
    `precision` were same pairs, and a share `recall` of the same pairs were that close."""

    precision: float
    threshold: float
    recall: float


@dataclass(frozen=True)
class FalsePairRate:
    """At a distance threshold (squared L2): the share of different pairs within it (`fpr`, the estimate), the
    upper end of its 95 % interval (`fpr_upper`), and the share of same pairs within it (`recall`)."""

    threshold: float
    fpr: float
    fpr_upper: float
    recall: float


def check_false_pair_rates(points: object) -> None:
    """`ModelError` unless `points` is a tuple of 1 to `MAX_CURVE_POINTS` `FalsePairRate`s of ascending thresholds
    in [0, 4], rates and recalls in [0, 1] that never fall as the threshold grows, and each `fpr` at most its
    `fpr_upper`."""
    if not (isinstance(points, tuple) and 1 <= len(points) <= MAX_CURVE_POINTS
            and all(isinstance(point, FalsePairRate) for point in points)):
        raise ModelError(f"points must be a tuple of 1 to {MAX_CURVE_POINTS} false-pair rates "
                         f"(got {shown_value(points)})")
    for point in points:
        _require_number("threshold", point.threshold, 0.0, MAX_DISTANCE)
        for name in ("fpr", "fpr_upper", "recall"):
            _require_number(name, getattr(point, name), 0.0, 1.0)
        if point.fpr > point.fpr_upper:
            raise ModelError(f"fpr {point.fpr} is above its upper bound {point.fpr_upper} at threshold "
                             f"{point.threshold}")
    for lower, higher in zip(points, points[1:]):
        if higher.threshold <= lower.threshold:
            raise ModelError(f"the points must have ascending thresholds (got {lower.threshold} before "
                             f"{higher.threshold})")
        if higher.fpr < lower.fpr or higher.fpr_upper < lower.fpr_upper or higher.recall < lower.recall:
            raise ModelError(f"threshold {higher.threshold} cannot have a smaller fpr, fpr_upper or recall than "
                             f"threshold {lower.threshold}")


def _objects(value: object, name: str, each: str, fields: set[str]) -> list[dict[str, Any]]:
    """`value`, a JSON list of objects with exactly `fields`; `ModelError` naming `name` (the list) or `each` (an
    item) otherwise."""
    if not isinstance(value, list):
        raise ModelError(f"{name} must be a list (got {shown_value(value)})")
    for item in value:
        if not isinstance(item, dict) or item.keys() != fields:
            raise ModelError(f"each {each} must be a JSON object of {', '.join(sorted(fields))} "
                             f"(got {shown_value(item)})")
    return value

def false_pair_rates_from_dicts(points: object) -> tuple[FalsePairRate, ...]:
    """The points of a JSON list of ``{"threshold", "fpr", "fpr_upper", "recall"}`` objects, checked
    (`check_false_pair_rates`); `ModelError` naming the field at fault."""
    rates = tuple(FalsePairRate(**point) for point in _objects(points, "points", "point", _POINT_FIELDS))
    check_false_pair_rates(rates)
    return rates


@dataclass(frozen=True)
class FalsePairCurve:
    """A model's false-pair rate at several thresholds, measured on hard different pairs that `measured_on`
    names, and the threshold its decisions use when none is asked for (`default_threshold`, one of the points),
    chosen by what that rate means in a collection (`retrieval.decisions.false_pairs`)."""

    points: tuple[FalsePairRate, ...]
    measured_on: str
    default_threshold: float

    def __post_init__(self) -> None:
        check_false_pair_rates(self.points)
        _require_measured_on(self.measured_on)
        if not any(point.threshold == self.default_threshold for point in self.points):
            raise ModelError(f"default_threshold must be the threshold of one of the points "
                             f"(got {shown_value(self.default_threshold)})")

    @property
    def default(self) -> FalsePairRate:
        """The point of the default threshold."""
        return next(point for point in self.points if point.threshold == self.default_threshold)

    def to_dict(self) -> dict[str, object]:
        return {"points": [vars(point) for point in self.points], "measured_on": self.measured_on,
                "default_threshold": self.default_threshold}

    @classmethod
    def from_dict(cls, data: object) -> FalsePairCurve:
        if not isinstance(data, dict) or data.keys() != _CURVE_FIELDS:
            raise ModelError(f"false_pairs must be a JSON object of {', '.join(sorted(_CURVE_FIELDS))} "
                             f"(got {shown_value(data)})")
        return cls(false_pair_rates_from_dicts(data["points"]), data["measured_on"], data["default_threshold"])


@dataclass(frozen=True)
class ShippedCalibration:
    """The thresholds a model file carries for its own decisions, at several precision levels, measured on data
    that `measured_on` names in a few words.

    It lies in the file's metadata beside the spec, not in it: it is no part of the content hash, as it changes
    nothing the model computes. Checked whole on construction (`ModelError`), as a model file can say anything.
    """

    levels: tuple[PrecisionLevel, ...]
    """Ascending precision; a higher precision never has a larger threshold or recall."""
    measured_on: str
    false_pairs: FalsePairCurve | None = None
    """Where present, its default threshold is the one decisions use when no threshold or precision is asked for
    (else the level at `retrieval.decisions.calibration.DEFAULT_PRECISION`), and its rates say how many false pairs to
    expect in a collection."""

    def __post_init__(self) -> None:
        _require_measured_on(self.measured_on)
        if self.false_pairs is not None and not isinstance(self.false_pairs, FalsePairCurve):
            raise ModelError(f"false_pairs must be a FalsePairCurve (got {shown_value(self.false_pairs)})")
        if not (isinstance(self.levels, tuple) and 1 <= len(self.levels) <= MAX_LEVELS
                and all(isinstance(level, PrecisionLevel) for level in self.levels)):
            raise ModelError(f"levels must be a tuple of 1 to {MAX_LEVELS} precision levels "
                             f"(got {shown_value(self.levels)})")
        for level in self.levels:
            _require_number("precision", level.precision, 0.0, 1.0, above_low=True)
            _require_number("threshold", level.threshold, 0.0, MAX_DISTANCE)
            _require_number("recall", level.recall, 0.0, 1.0)
        for lower, higher in zip(self.levels, self.levels[1:]):
            if higher.precision <= lower.precision:
                raise ModelError(f"the levels must have ascending precisions (got {lower.precision} before "
                                 f"{higher.precision})")
            if higher.threshold > lower.threshold or higher.recall > lower.recall:
                raise ModelError(f"precision {higher.precision} cannot have a larger threshold or recall than "
                                 f"precision {lower.precision}")

    def to_json(self) -> str:
        data: dict[str, object] = {"levels": [vars(level) for level in self.levels], "measured_on": self.measured_on}
        if self.false_pairs is not None:
            data["false_pairs"] = self.false_pairs.to_dict()
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ShippedCalibration:
        """The calibration saved by `to_json`; `ModelError` naming the field at fault."""
        data = _parse_json(text, "it is")
        if not (isinstance(data, dict) and data.keys() >= _CALIBRATION_FIELDS
                and data.keys() <= _CALIBRATION_FIELDS | _OPTIONAL_CALIBRATION_FIELDS):
            raise ModelError(f"must be a JSON object of {', '.join(sorted(_CALIBRATION_FIELDS))} "
                             f"(and optionally {', '.join(sorted(_OPTIONAL_CALIBRATION_FIELDS))}) "
                             f"(got {shown_value(data)})")
        levels = _objects(data["levels"], "levels", "level", _LEVEL_FIELDS)
        curve = FalsePairCurve.from_dict(data["false_pairs"]) if "false_pairs" in data else None
        return cls(tuple(PrecisionLevel(**level) for level in levels), data["measured_on"], curve)


def _require_measured_on(measured_on: object) -> None:
    if not (isinstance(measured_on, str) and 1 <= len(measured_on) <= MAX_MEASURED_ON_LENGTH):
        raise ModelError(f"measured_on must be a string of 1 to {MAX_MEASURED_ON_LENGTH} characters "
                         f"(got {shown_value(measured_on)})")


def _require_number(name: str, value: object, low: float, high: float, above_low: bool = False) -> None:
    """A real number (not a bool) from `low` (excluded with `above_low`) to `high`; never NaN."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and (low < value if above_low else low <= value) and value <= high):  # type: ignore[operator]
        bounds = f"{'(' if above_low else '['}{low:g}, {high:g}]"
        raise ModelError(f"{name} must be a number in {bounds} (got {shown_value(value)})")


@dataclass(frozen=True)
class ModelHeader:
    """The metadata of a model file written by `EmbeddingModel.save`."""

    spec: ModelSpec
    content_hash: str
    calibration: ShippedCalibration | None = None


@contextmanager
def open_model_file(path: Path, framework: str) -> Iterator[Any]:
    """`safetensors.safe_open(path)`, whose failures (unreadable, not safetensors, truncated) are `ModelError`s.

    Opening reads only the header, and checks that every tensor it lists lies within the file.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework=framework) as handle:
            yield handle
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"cannot read model file {path}: {_first_line(exc)}") from exc


def read_model_header(path: Path) -> ModelHeader:
    """The spec, content hash and shipped calibration a model file was saved with, read without its tensors (or
    torch)."""
    with open_model_file(path, "numpy") as handle:
        metadata = handle.metadata() or {}
    return header_from_metadata(metadata, path)


def header_from_metadata(metadata: dict[str, str], path: Path) -> ModelHeader:
    """The header in the metadata of the safetensors file at `path`; `ModelError`, naming the file and the field,
    if it is not a simsearch model's."""
    if "spec" not in metadata:
        raise ModelError(f"{path} is not a simsearch model (no spec in its metadata)")
    try:
        spec = ModelSpec.from_json(metadata["spec"])
    except ModelError as exc:
        raise ModelError(f"{path}: bad model spec: {exc}") from exc
    if "content_hash" not in metadata:
        raise ModelError(f"{path} is not a simsearch model (no content hash in its metadata)")
    content_hash = metadata["content_hash"]
    if not is_content_hash(content_hash):
        raise ModelError(f"{path}: content_hash must be 64 hexadecimal digits (got {shown_value(content_hash)})")
    calibration = None
    if "calibration" in metadata:
        try:
            calibration = ShippedCalibration.from_json(metadata["calibration"])
        except ModelError as exc:
            raise ModelError(f"{path}: bad calibration: {exc}") from exc
    return ModelHeader(spec, content_hash, calibration)


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (a library's may run to several), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
