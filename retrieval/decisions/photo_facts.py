"""What a photo's index row does not hold and a keeper rule wants: when it was taken, and how hard a JPEG was
compressed. Read from the file itself when a duplicate group's keeper is chosen, for its members only (a few
files; about a millisecond each: only the header is read, never the pixels).

A file is read only while it is still the file indexed at its path (`FileIdentity.is_as_indexed`, on the very
descriptor read); any other file, and anything that cannot be read or parsed (no EXIF, a corrupt EXIF block, a
date such as "0000:00:00 00:00:00", a file Pillow does not open), gives unknown facts: the rules then fall back to
the file's time and treat its quality as unknown. Nothing here raises.
"""

from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache

import numpy as np
from PIL import Image

from retrieval.sources.file_identity import FileIdentity, file_id as identity_of
from retrieval.sources.images import register_formats

EXIF_IFD = 0x8769
DATE_TIME_ORIGINAL = 0x9003
OFFSET_TIME_ORIGINAL = 0x9011
SUB_SEC_TIME_ORIGINAL = 0x9291
JPEG_FORMATS = ("JPEG", "MPO")
"""Pillow's names for a JPEG file (MPO: a camera's multi-picture JPEG)."""

IJG_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99], dtype=np.int64)
"""The standard luminance quantisation table (JPEG Annex K, libjpeg's `std_luminance_quant_tbl`), in natural
order, as Pillow's `im.quantization` gives tables."""


@dataclass(frozen=True)
class PhotoFacts:
    taken_ns: int | None = None
    """When the photo was taken, in ns since the epoch: EXIF DateTimeOriginal with SubSecTimeOriginal, in the zone
    of OffsetTimeOriginal where the file has one, else in this machine's local zone (EXIF's own time is a wall
    clock without a zone: the camera's, which was most likely set to where its owner lives)."""
    jpeg_quality: int | None = None
    """The IJG quality (1-100) a JPEG was saved at, as estimated from its luminance quantisation table; None for
    a file that is not a JPEG."""


UNKNOWN = PhotoFacts()


@lru_cache(maxsize=65536)
def indexed_photo_facts(path: str, file_id: str | None, size: int | None, mtime_ns: int | None) -> PhotoFacts:
    """The facts of the file at `path` while it is the file indexed there (its device and inode, size and
    modification time as given); `UNKNOWN` for any other file, or none. Cached by all four, so a file changed since
    is read again."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO put in its place is not waited on
    except (OSError, ValueError):
        return UNKNOWN
    with open(descriptor, "rb") as handle:
        if not _is_as_indexed(os.fstat(descriptor), file_id, size, mtime_ns):
            return UNKNOWN
        facts = read_photo_facts(handle)
        return facts if _is_as_indexed(os.fstat(descriptor), file_id, size, mtime_ns) else UNKNOWN


def _is_as_indexed(info: os.stat_result, file_id: str | None, size: int | None, mtime_ns: int | None) -> bool:
    now = FileIdentity(identity_of(info), via_link=False, size=info.st_size, mtime_ns=info.st_mtime_ns)
    return stat.S_ISREG(info.st_mode) and now.is_as_indexed(file_id, size, mtime_ns)


def read_photo_facts(source: object) -> PhotoFacts:
    """The facts of an image file (a path or a binary file object), each one unknown where it cannot be read."""
    register_formats()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns of a corrupt EXIF block (even as it opens a JPEG)
            with Image.open(source) as im:  # type: ignore[arg-type]
                return PhotoFacts(taken_ns=_taken_ns(im), jpeg_quality=_jpeg_quality(im))
    except Exception:  # Pillow's plugins raise many types on a file they cannot parse
        return UNKNOWN


def _taken_ns(im: Image.Image) -> int | None:
    if im.format == "PNG" and "exif" not in im.info:
        return None  # a PNG's EXIF may follow its pixels, and Pillow decodes them all to find it
    try:
        exif = im.getexif()
        tags = exif.get_ifd(EXIF_IFD)
        text = tags.get(DATE_TIME_ORIGINAL) or exif.get(DATE_TIME_ORIGINAL)  # some writers put it in IFD0
        return capture_time_ns(text, tags.get(SUB_SEC_TIME_ORIGINAL), tags.get(OFFSET_TIME_ORIGINAL))
    except Exception:  # a corrupt EXIF block is no capture time
        return None


def capture_time_ns(text: object, sub_second: object = None, offset: object = None) -> int | None:
    """EXIF's "YYYY:MM:DD HH:MM:SS" (with its sub-second digits and "+HH:MM" offset, where given) in ns since the
    epoch; None for anything else (blank, zeroed or impossible dates: cameras write all of them)."""
    if not isinstance(text, str):
        return None
    zone = _zone(offset)
    try:
        taken = datetime.strptime(text.strip("\x00 "), "%Y:%m:%d %H:%M:%S")
        seconds = int((taken.replace(tzinfo=zone) if zone is not None else taken.astimezone()).timestamp())
    except (ValueError, OverflowError, OSError):  # not a date, or one the platform's clock cannot place
        return None
    digits = sub_second.strip("\x00 ") if isinstance(sub_second, str) else ""
    return seconds * 1_000_000_000 + (int(digits[:9].ljust(9, "0")) if digits.isdigit() else 0)


def _zone(offset: object) -> timezone | None:
    """EXIF's "+HH:MM" or "-HH:MM" offset from UTC; None for anything else."""
    if not isinstance(offset, str):
        return None
    text = offset.strip("\x00 ")
    if len(text) != 6 or text[0] not in "+-" or text[3] != ":" or not (text[1:3] + text[4:]).isdigit():
        return None
    minutes = int(text[1:3]) * 60 + int(text[4:])
    if minutes >= 24 * 60:
        return None
    return timezone((-1 if text[0] == "-" else 1) * timedelta(minutes=minutes))


def _jpeg_quality(im: Image.Image) -> int | None:
    tables = getattr(im, "quantization", None) if im.format in JPEG_FORMATS else None
    if not tables:
        return None
    luminance = np.asarray(tables[min(tables)], dtype=np.int64)  # table 0: the one the luminance uses
    return estimate_jpeg_quality(luminance) if luminance.shape == (64,) and luminance.min() > 0 else None


def estimate_jpeg_quality(luminance: np.ndarray) -> int:
    """The IJG quality (1-100) whose scaled standard luminance table is nearest `luminance` (64 values, natural
    order): libjpeg's `jpeg_quality_scaling` inverted by trying every quality, as ImageMagick's estimate does by its
    tables of sums. Exact for files libjpeg wrote (Pillow, ImageMagick, GIMP, most software); for a camera's own
    tables, the quality they are nearest, compared as ratios (log scale), so that no coefficient weighs more for
    being large."""
    qualities = np.arange(1, 101)
    scales = np.where(qualities < 50, 5000 // qualities, 200 - 2 * qualities)
    ceiling = 255 if luminance.max() <= 255 else 32767  # libjpeg's baseline clamp, where the file kept to it
    candidates = np.clip((IJG_LUMINANCE[None, :] * scales[:, None] + 50) // 100, 1, ceiling)
    errors = np.abs(np.log(candidates) - np.log(luminance[None, :])).sum(axis=1)
    return int(qualities[int(np.argmin(errors))])
