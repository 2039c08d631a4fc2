"""A camera RAW file as the JPEG preview its camera embedded in it (LibRaw, through `rawpy`), oriented as the
camera held it.

The preview is what the camera showed and what most photo browsers show: a JPEG of the photo as shot, usually
at its full size (small on some older cameras), and read without developing the raw sensor data, which would take
a second or more a file. Its pixels are what a duplicate of the RAW (the camera's own JPEG, an export) shows.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from retrieval.errors import DecodeError

RAW_SUFFIXES = frozenset({
    ".3fr", ".arw", ".cr2", ".cr3", ".crw", ".dcr", ".dng", ".erf", ".iiq", ".kdc", ".mef", ".mos", ".mrw", ".nef",
    ".nrw", ".orf", ".pef", ".raf", ".rw2", ".rwl", ".sr2", ".srf", ".srw", ".x3f"})
"""The names of the camera RAW files LibRaw reads (not `.raw`: other programs use that name for anything)."""

_ORIENTATION_TAG = 0x0112
_EXIF_ORIENTATION_OF_FLIP = {3: 3, 5: 8, 6: 6}
"""LibRaw's `flip` (dcraw's: 3 turned half round, 5 a quarter anticlockwise, 6 a quarter clockwise) as the EXIF
orientation that shows the photo upright."""


def raw_preview(source: Path | bytes) -> Image.Image:
    """The embedded preview of a RAW file (or its bytes), opened but not decoded, with the RAW's orientation as its
    EXIF orientation; `DecodeError` for a file LibRaw does not read or one without a preview."""
    import rawpy  # only once a RAW file is met: it loads LibRaw

    try:
        with rawpy.imread(str(source) if isinstance(source, Path) else io.BytesIO(source)) as raw:
            thumb = raw.extract_thumb()
            flip = raw.sizes.flip
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        raise DecodeError("RAW file without a preview simsearch can read") from None
    except (rawpy.LibRawFileUnsupportedError, rawpy.LibRawIOError):  # LibRaw reads past the end of a short file
        raise DecodeError("not a RAW file LibRaw reads, or a truncated one") from None
    except (rawpy.LibRawError, rawpy.NotSupportedError, OSError) as exc:
        raise DecodeError(f"RAW file LibRaw cannot read ({_message(exc)})") from exc
    if thumb.format == rawpy.ThumbFormat.JPEG:
        im = Image.open(io.BytesIO(thumb.data))
    else:
        im = Image.fromarray(thumb.data)
    if flip in _EXIF_ORIENTATION_OF_FLIP:
        im.getexif()[_ORIENTATION_TAG] = _EXIF_ORIENTATION_OF_FLIP[flip]  # a camera stores its preview unturned
    return im


def _message(exc: Exception) -> str:
    """LibRaw's message (rawpy gives it as bytes), on one line."""
    detail = exc.args[0] if exc.args else ""
    text = detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)
    return " ".join(text.split()) or type(exc).__name__
