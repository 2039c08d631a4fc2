"""Decode an image file into the fixed-size pixel array a model takes.

Decoding is defensive because collections hold anything: EXIF orientation is applied, every mode
(CMYK, 16-bit, palette with transparency, ...) ends in the model's mode, JPEGs are decoded at a
reduced DCT scale ("draft") so a 12-megapixel photo is never decoded at full size, other large
images are converted and box-reduced a strip at a time (memory: the decoded file and a strip), and
images over a pixel limit are refused before their pixels are read.

The formats are Pillow's, HEIF/HEIC through `pillow-heif` (registered here, once, for every module that opens
images), AVIF through Pillow's own plugin (where this Pillow was built with libavif, as its wheels are), and camera
RAW files through the JPEG preview embedded in them (`retrieval.sources.raw_preview`), told apart by their names.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pillow_heif
from PIL import Image, features

from retrieval.errors import DecodeError, ModelError
from retrieval.sources.raw_preview import RAW_SUFFIXES, raw_preview


@cache
def register_formats() -> None:
    """Let Pillow open HEIF and HEIC files (`pillow-heif`); once a process, whoever calls it first."""
    pillow_heif.register_heif_opener()


register_formats()

HEIF_SUFFIXES = frozenset({".heic", ".heif", ".hif"})
AVIF_SUFFIXES = frozenset({".avif"}) if features.check("avif") else frozenset()
"""Empty where this Pillow was built without libavif: such files are then counted among those not read."""
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}) | HEIF_SUFFIXES \
    | AVIF_SUFFIXES | RAW_SUFFIXES
DEFAULT_MAX_PIXELS = 100_000_000
MODES = ("RGB", "L")
MAX_INPUT_SIDE = 4096
MIN_STD = 1e-6
MAX_NORMALISATION = 1e6

# The limit is enforced by bounded_image itself, before any pixel is read.
Image.MAX_IMAGE_PIXELS = None

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
             "lanczos": Image.Resampling.LANCZOS, "box": Image.Resampling.BOX}
_SWAPS_AXES = {5, 6, 7, 8}
_ORIENTATION_TAG = 0x0112
_TRANSPOSES = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
               5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_90}
"""How to display an image stored with each EXIF orientation (1 is as stored)."""
_HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
REDUCING_GAP = 3
"""An image in another mode than 8-bit RGB or grey is box-reduced (in strips) to no less than this many times the
model's input size before it is resized: Pillow's `reducing_gap`, at which the result matches a resize of the whole
image within a grey level or two (three for a dithered bilevel image)."""
STRIP_PIXELS = 1 << 20
"""Pixels of a strip converted at a time: a few MB in any mode."""


@dataclass(frozen=True)
class Preprocessing:
    """How a file becomes model input: resized to `size` (width, height) in PIL `mode`, then
    normalised on the device as `(pixel - mean) / std` on 0..255 values.

    Every value is checked on construction (`ModelError`), because a model file's metadata can say anything:
    a zero or tiny std gives infinite inputs, a huge size asks for gigabytes a batch. A negative std is
    allowed: it inverts the image (the grey small-cnn models draw bright strokes on a dark ground).
    """

    size: tuple[int, int]
    mode: str = "RGB"
    mean: float = 0.0
    std: float = 255.0
    resample: str = "bilinear"

    def __post_init__(self) -> None:
        if (not isinstance(self.size, tuple) or len(self.size) != 2
                or not all(is_integer(side) and 1 <= side <= MAX_INPUT_SIDE for side in self.size)):
            raise ModelError(f"preprocessing size must be [width, height], each from 1 to {MAX_INPUT_SIDE} "
                             f"(got {shown_value(self.size)})")
        if self.mode not in MODES:
            raise ModelError(f"preprocessing mode must be {' or '.join(MODES)} (got {shown_value(self.mode)})")
        if not (_is_number(self.mean) and abs(self.mean) <= MAX_NORMALISATION):
            raise ModelError(f"preprocessing mean must be a number from {-MAX_NORMALISATION:g} to "
                             f"{MAX_NORMALISATION:g} (got {shown_value(self.mean)})")
        if not (_is_number(self.std) and MIN_STD <= abs(self.std) <= MAX_NORMALISATION):
            raise ModelError(f"preprocessing std must be a number of magnitude {MIN_STD:g} to "
                             f"{MAX_NORMALISATION:g} (got {shown_value(self.std)})")
        if not isinstance(self.resample, str) or self.resample not in _RESAMPLE:
            raise ModelError(f"preprocessing resample must be one of {', '.join(_RESAMPLE)} "
                             f"(got {shown_value(self.resample)})")
        object.__setattr__(self, "mean", float(self.mean))  # JSON may say 127 for 127.0
        object.__setattr__(self, "std", float(self.std))

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    def to_dict(self) -> dict[str, object]:
        return {"size": list(self.size), "mode": self.mode, "mean": self.mean, "std": self.std,
                "resample": self.resample}

    @classmethod
    def from_dict(cls, data: object) -> Preprocessing:
        """The preprocessing of a model spec's JSON; `ModelError` naming the field at fault."""
        if not isinstance(data, dict):
            raise ModelError(f"preprocessing must be a JSON object (got {shown_value(data)})")
        fields = {"size", "mode", "mean", "std", "resample"}
        missing = sorted(fields - {"resample"} - data.keys())
        if missing:
            raise ModelError(f"preprocessing lacks {', '.join(missing)}")
        unknown = sorted(data.keys() - fields)
        if unknown:
            raise ModelError(f"preprocessing has unknown fields {', '.join(map(shown_value, unknown))}")
        size = data["size"]
        return cls(size=tuple(size) if isinstance(size, list) else size,  # type: ignore[arg-type]
                   mode=data["mode"], mean=data["mean"], std=data["std"],  # type: ignore[arg-type]
                   resample=data.get("resample", "bilinear"))  # type: ignore[arg-type]


def is_integer(value: object) -> bool:
    """An int that is not a bool (JSON's true is no size)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """An int or a finite float (JSON's ints can be too large for a float, so they are not converted here)."""
    return is_integer(value) or (isinstance(value, float) and math.isfinite(value))


def shown_value(value: object) -> str:
    """`value` for a one-line message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class DecodedImage:
    """Model-ready pixels (H, W, C) uint8 and the original size after orientation."""

    pixels: np.ndarray
    width: int
    height: int


def decode_image(source: Path | bytes, prep: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS,
                 name: str | None = None) -> DecodedImage:
    """Decode a file (or its bytes) for a model; raises `DecodeError` on anything unusable. `name`, the file's
    name or path where `source` is its bytes, tells a camera RAW file (read through its preview)."""
    try:
        with open_image(source, name) as im:
            return _decode_open(im, prep, max_pixels)
    except DecodeError:
        raise
    except Exception as exc:  # Pillow's plugins raise many types on hostile files.
        raise DecodeError(_describe(exc)) from exc


def open_image(source: Path | bytes, name: str | None = None) -> Image.Image:
    """The image of a file (or its bytes, named by `name`) opened by Pillow, its pixels not read yet: a RAW
    file's embedded preview (`DecodeError` where it has none), anything else itself."""
    if is_raw_name(str(source) if isinstance(source, Path) else name or ""):
        return raw_preview(source)
    return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)


def is_raw_name(name: str) -> bool:
    """Whether a file of this name is a camera RAW file."""
    return os.path.splitext(name)[1].lower() in RAW_SUFFIXES


def _describe(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    if text.startswith("cannot identify image file"):
        return "not a recognised image format"
    return text.splitlines()[0]


def _decode_open(im: Image.Image, prep: Preprocessing, max_pixels: int) -> DecodedImage:
    width, height = im.size
    small = bounded_image(im, prep.size, prep.mode, max_pixels)
    swapped = im.getexif().get(_ORIENTATION_TAG, 1) in _SWAPS_AXES  # after the limit: it may read a PNG's pixels
    pixels = np.asarray(small.resize(prep.size, _RESAMPLE[prep.resample]), dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return DecodedImage(pixels=pixels, width=height if swapped else width, height=width if swapped else height)


def bounded_image(im: Image.Image, size: tuple[int, int], mode: str, max_pixels: int) -> Image.Image:
    """The just opened `im` as displayed (its EXIF orientation applied) and in `mode` ("RGB" or "L"), for a resize
    to `size` (width, height) to finish.

    Decoded in bounded memory: `DecodeError` for more than `max_pixels` before any pixel is read; a JPEG decoded at
    a reduced DCT scale ("draft"); an 8-bit RGB or grey image whole; any other mode (16-bit, 32-bit, float, CMYK,
    palette, transparency) converted and box-reduced to no less than `REDUCING_GAP` times `size` a strip at a time,
    so that its peak is the decoded file and a strip, never a full-size copy in another mode (a 9000x9000 16-bit
    PNG took 2.3 GB and 8 s as float64; 0.2 GB and 0.6 s so)."""
    width, height = im.size
    if width * height > max_pixels:
        raise DecodeError(f"{width}x{height} pixels exceeds the limit of {max_pixels:,} (decompression bomb?)")
    orientation = im.getexif().get(_ORIENTATION_TAG, 1)  # a PNG's EXIF may follow its pixels: this reads them
    stored = size[::-1] if orientation in _SWAPS_AXES else size
    if im.format == "JPEG":
        im.draft("L" if mode == "L" and im.mode == "RGB" else None, stored)
    im.load()
    if im.mode in MODES:  # the ordinary 8-bit image: resized whole as it always was (that takes no copy of it)
        im = im if im.mode == mode else im.convert(mode)
    else:
        factor = max(1, min(im.size[0] // (REDUCING_GAP * stored[0]), im.size[1] // (REDUCING_GAP * stored[1])))
        im = _converted_in_strips(im, mode, factor)
    return im.transpose(_TRANSPOSES[orientation]) if orientation in _TRANSPOSES else im


def _converted_in_strips(im: Image.Image, mode: str, factor: int) -> Image.Image:
    """`im` in `mode` (as `_to_mode` converts it) and box-reduced by `factor`, a strip of rows at a time. High bit
    depths are reduced first, as 32-bit integers or floats, and scaled to 8 bits after (scaling is linear, and
    `factor`**2 times fewer values to scale made a 9000x9000 16-bit PNG 0.9 s faster); anything else is converted
    first (transparency must be flattened, and a palette looked up, before pixels are averaged)."""
    top = _high_bit_top(im)
    width, height = im.size
    rows = factor * max(1, STRIP_PIXELS // (width * factor))
    out = Image.new(mode, (-(-width // factor), -(-height // factor)))
    for first in range(0, height, rows):
        strip = im.crop((0, first, width, min(first + rows, height)))
        if strip.mode in _HIGH_BIT_MODES:
            strip = _to_mode((strip.convert("I") if strip.mode != "F" else strip).reduce(factor), mode, top)
        else:
            strip = _to_mode(strip, mode, top).reduce(factor)
        out.paste(strip, (0, first // factor))
    return out


def _high_bit_top(im: Image.Image) -> float:
    """The value that becomes 255 in an image of more than 8 bits a channel: 65535 for 16-bit; for 32-bit integers
    and floats, 65535 where a value exceeds 255, else 255 (such images hold 8-bit values as often as 16-bit ones)."""
    if im.mode.startswith("I;16"):
        return 65535.0
    if im.mode in ("I", "F"):
        return 65535.0 if im.getextrema()[1] > 255 else 255.0  # type: ignore[operator]
    return 255.0


def _to_mode(im: Image.Image, mode: str, top: float) -> Image.Image:
    """Convert any Pillow mode to `mode` ("RGB" or "L"), scaling high bit depths (`top` becomes 255) and flattening
    transparency onto white."""
    if im.mode in _HIGH_BIT_MODES:
        array = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return im if im.mode == mode else im.convert(mode)
