"""Tiny and flat images are judged on their pixels: the one rule `dedup`, `verify`, `classify` and the server
apply to a pair in which either image is under `TINY_SIDE` pixels on its shorter side or nearly one colour.

An embedding of such an image says little. A tiny image is blown up to the model's input, a blur; a flat one
gives the network nothing to respond to. The shipped model puts 10,951 of the 19,900 pairs of 200 solid colours
within its default threshold (0.667), and within its earlier one (1.196) every pair of 60 distinct images of one
colour with a faint gradient and 88 pairs of 200 distinct CIFAR-10 images (none at 0.667: a stricter threshold
hides the collapse of tiny images, it does not mend it). So for these a pair is the same image only if, besides lying
within the threshold, the two agree pixel for pixel at a small common size: both reduced to `SIGNATURE_SIDE` x
`SIGNATURE_SIDE` RGB (aspect ratio dropped, as for the model), their mean absolute difference is at most
`PIXEL_TOLERANCE` grey levels. Exact copies (one content) are the same whatever their size.

How the numbers were chosen (measured with Pillow on the files of ../shared/datasets):

  `TINY_SIDE` 64          the issue's "under ~64 px"; the model's input is 224, so below 64 a side is blown up
                          more than 3.5 times.
  `FLAT_SPREAD` 6         RMS distance of the pixels from their mean colour, at 64 x 64. The lowest of the 800
                          ImageNet photos is 14.8, of the test photos and all their edited copies 10.6 (a
                          posterised shot of grass), of CIFAR-10 11.7; a solid colour is 0, one with a faint
                          gradient and grain 2-4. Fine texture counts at 64 x 64 (brick, gravel and grass are 2.7
                          to 6.4 at 16 x 16, and none is under 11 here).
  `SIGNATURE_SIDE` 8      at 8 x 8 the nearest of 10,000 CIFAR-10 test images to each of 1,000 of them differs by
                          7.0 levels at least (1 % under 11.3), while re-saved copies differ by at most 5.0 (JPEG
                          quality 30), 4.0 (quality 50), 3.2 (WebP 50), 0.8 (2x up and JPEG 85, a resize to 24
                          px); at 16 x 16 the two overlap (JPEG 30 up to 9.3, nearest distinct from 8.2).
  `PIXEL_TOLERANCE` 4.0   between them: it keeps re-saves down to JPEG quality 50 (and most of quality 30) of tiny
                          images and every re-save of a flat one (a solid colour at JPEG 30 moves by up to 3.3);
                          two solid colours within 4 levels on average per channel are alike to the eye (among
                          200 colours drawn at random, about 3 such pairs are expected).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.errors import DecodeError
from retrieval.sources.file_identity import FileIdentity, identify_file
from retrieval.sources.images import DEFAULT_MAX_PIXELS, Preprocessing, decode_image

TINY_SIDE = 64
FLAT_SPREAD = 6.0
FLAT_SIDE = 64
SIGNATURE_SIDE = 8
PIXEL_TOLERANCE = 4.0
_DECODED = Preprocessing(size=(FLAT_SIDE, FLAT_SIDE), mode="RGB", resample="bilinear")


@dataclass(frozen=True)
class PixelSignature:
    """What the rule needs of one image: its `SIGNATURE_SIDE` x `SIGNATURE_SIDE` RGB means, how far its pixels
    spread about their mean colour (RMS, at `FLAT_SIDE` x `FLAT_SIDE`), and its size as displayed."""

    small: np.ndarray
    spread: float
    width: int
    height: int

    @property
    def tiny(self) -> bool:
        return min(self.width, self.height) < TINY_SIDE

    @property
    def flat(self) -> bool:
        return self.spread < FLAT_SPREAD

    @property
    def why(self) -> str | None:
        """"tiny", "flat" (or both), or None for an image the embedding judges."""
        reasons = [name for name, holds in (("tiny", self.tiny), ("flat", self.flat)) if holds]
        return " and ".join(reasons) or None


def signature(source: Path | str | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> PixelSignature:
    """The signature of an image file (or its bytes), decoded as `simsearch index` decodes it (orientation, modes,
    the pixel limit); `DecodeError` for one that cannot be."""
    decoded = decode_image(Path(source) if isinstance(source, str) else source, _DECODED, max_pixels)
    pixels = decoded.pixels.astype(np.float32)
    spread = float(np.sqrt(np.mean((pixels - pixels.reshape(-1, 3).mean(axis=0)) ** 2)))
    block = FLAT_SIDE // SIGNATURE_SIDE
    small = pixels.reshape(SIGNATURE_SIDE, block, SIGNATURE_SIDE, block, 3).mean(axis=(1, 3))
    return PixelSignature(small, spread, decoded.width, decoded.height)


def indexed_signature(path: str, file_id: str | None, size: int | None, mtime_ns: int | None,
                      identify: Callable[[str], FileIdentity | None] = identify_file) -> PixelSignature | None:
    """The signature of the indexed image at `path`, or None unless its file is the one indexed there
    (`FileIdentity.is_as_indexed`, which fails closed) both before and after it is read, and decodes: nothing is
    judged on pixels that are not the indexed image's."""
    before = identify(path)
    if before is None or not before.is_as_indexed(file_id, size, mtime_ns):
        return None
    try:
        found = signature(path)
    except DecodeError:
        return None
    return found if identify(path) == before else None


@dataclass(frozen=True)
class PixelJudgement:
    """A pair judged on pixels: why (which image is tiny or flat), their mean absolute difference at
    `SIGNATURE_SIDE` x `SIGNATURE_SIDE` (None when one could not be read: then they do not agree) and whether it
    is within `PIXEL_TOLERANCE`."""

    why: str
    difference: float | None

    @property
    def agree(self) -> bool:
        return self.difference is not None and self.difference <= PIXEL_TOLERANCE

    def to_dict(self) -> dict[str, object]:
        return {"why": self.why, "difference": None if self.difference is None else round(self.difference, 3),
                "tolerance": PIXEL_TOLERANCE, "agree": self.agree}

    def describe(self) -> str:
        """For a person: e.g. "judged on pixels (one is flat): they differ by 23.1 levels (tolerance 4)"."""
        if self.difference is None:
            return f"judged on pixels ({self.why}), which could not be read: not the same"
        verdict = "agree" if self.agree else "differ"
        return (f"judged on pixels ({self.why}): they {verdict}, {self.difference:.1f} grey levels apart "
                f"(tolerance {PIXEL_TOLERANCE:g})")


def judge(first: PixelSignature | None, second: PixelSignature | None) -> PixelJudgement | None:
    """The pixel judgement of a pair of different contents, or None where the embedding decides (neither image is
    tiny or flat). A missing signature (a file not as indexed, or unreadable) is judged on pixels and does not
    agree: dedup fails closed."""
    if first is None or second is None:
        return PixelJudgement("not readable as indexed", None)
    one, other = first.why, second.why
    if one is None and other is None:
        return None
    if one is not None and other is not None:
        why = f"both are {one}" if one == other else f"one is {one}, the other {other}"
    else:
        why = f"one is {one or other}"
    return PixelJudgement(why, float(np.mean(np.abs(first.small - second.small))))


def same_by_rule(within: bool, judgement: PixelJudgement | None) -> bool:
    """The decision for two different contents: within the threshold and, where they are judged on pixels, their
    pixels agree."""
    return within and (judgement is None or judgement.agree)
