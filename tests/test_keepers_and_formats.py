"""Issue 23, items 5 and 6: keepers a photographer would choose (capture time, JPEG quality, file size) and the
formats people have (HEIC, AVIF, camera RAW through its preview; the rest counted by extension)."""

from __future__ import annotations

import io
import json
import os
import struct
from datetime import datetime, timezone
from pathlib import Path

import pytest
from PIL import Image, features

from conftest import invoke, photo
from retrieval.decisions.dedup import Candidate
from retrieval.decisions.keeper_rules import order_key, parse_rules
from retrieval.decisions.photo_facts import UNKNOWN, capture_time_ns, indexed_photo_facts, read_photo_facts
from retrieval.errors import DecodeError
from retrieval.sources.images import IMAGE_SUFFIXES, Preprocessing, decode_image

THRESHOLD = "0.1"
"""Wide enough for re-encodes of one test photo under the tiny model, far below two different ones."""


def with_capture_time(when: str, offset: str | None = None) -> Image.Exif:
    """EXIF whose DateTimeOriginal (and OffsetTimeOriginal) sit in the Exif IFD (0x8769), where cameras put them."""
    exif = Image.Exif()
    tags = exif.get_ifd(0x8769)
    tags[0x9003] = when
    if offset is not None:
        tags[0x9011] = offset
    return exif


def set_mtime(path: Path, year: int) -> None:
    stamp = datetime(year, 6, 1, tzinfo=timezone.utc).timestamp()
    os.utime(path, (stamp, stamp))


def dedup(root: Path, *args: str) -> list[dict[str, object]]:
    result = invoke("dedup", "--index", "idx", "--threshold", THRESHOLD, "--json", *args, cwd=root)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def index(root: Path, model: Path, folder: str = "p") -> str:
    result = invoke("index", folder, "--index", "idx", "--model", str(model), "--workers", "0", cwd=root)
    assert result.exit_code == 0, result.output
    return result.output


def keeper_name(group: dict[str, object]) -> str:
    return Path(group["keeper"]["path"]).name  # type: ignore[index]


# --- photo facts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quality", [40, 75, 95])
def test_the_jpeg_quality_estimate_is_within_5_of_the_quality_saved(quality: int) -> None:
    data = io.BytesIO()
    photo(quality, (320, 240)).save(data, "JPEG", quality=quality)
    estimate = read_photo_facts(io.BytesIO(data.getvalue())).jpeg_quality
    assert estimate is not None and abs(estimate - quality) <= 5


def test_a_file_that_is_not_a_jpeg_has_no_quality_and_garbage_has_no_facts() -> None:
    data = io.BytesIO()
    photo(1).save(data, "PNG")
    assert read_photo_facts(io.BytesIO(data.getvalue())).jpeg_quality is None
    assert read_photo_facts(io.BytesIO(b"\xff\xd8\xff\xe1 not a jpeg")) == UNKNOWN


def test_capture_time_reads_the_offset_sub_seconds_and_refuses_what_cameras_get_wrong() -> None:
    utc = int(datetime(2001, 2, 3, 2, 5, 6, tzinfo=timezone.utc).timestamp()) * 10**9
    assert capture_time_ns("2001:02:03 04:05:06", None, "+02:00") == utc
    assert capture_time_ns("2001:02:03 04:05:06", "25", "+02:00") == utc + 250_000_000
    local = int(datetime(2001, 2, 3, 4, 5, 6).timestamp()) * 10**9  # no offset: this machine's zone
    assert capture_time_ns("2001:02:03 04:05:06", "", "bogus") == local
    for wrong in ("0000:00:00 00:00:00", "    :  :     :  :  ", "2001:13:40 99:00:00", None, b"2001"):
        assert capture_time_ns(wrong) is None


def test_a_corrupt_exif_block_is_no_capture_time_and_no_crash(tmp_path: Path) -> None:
    path = tmp_path / "broken.jpg"
    photo(1).save(path, quality=90, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff garbage")
    facts = read_photo_facts(path)
    assert facts.taken_ns is None and facts.jpeg_quality == 90


def test_facts_are_read_only_from_the_file_as_indexed(tmp_path: Path) -> None:
    """Fail closed: a file rewritten, replaced or gone since it was indexed has unknown facts."""
    path = tmp_path / "a.jpg"
    photo(1).save(path, quality=50, exif=with_capture_time("2001:02:03 04:05:06", "+00:00"))
    info = os.stat(path)
    file_id = f"{info.st_dev}:{info.st_ino}"
    facts = indexed_photo_facts(str(path), file_id, info.st_size, info.st_mtime_ns)
    assert facts.jpeg_quality == 50 and facts.taken_ns == 981173106 * 10**9  # 2001-02-03 04:05:06 UTC
    assert indexed_photo_facts(str(path), file_id, info.st_size, info.st_mtime_ns + 1) == UNKNOWN
    assert indexed_photo_facts(str(path), "0:0", info.st_size, info.st_mtime_ns) == UNKNOWN
    assert indexed_photo_facts(str(path), None, info.st_size, info.st_mtime_ns) == UNKNOWN
    assert indexed_photo_facts(str(tmp_path / "gone.jpg"), file_id, info.st_size, info.st_mtime_ns) == UNKNOWN


# --- keeper rules --------------------------------------------------------------------------------------------


def test_file_size_rules() -> None:
    small = Candidate("/a/small.jpg", 10, 10, 1, size=100)
    large = Candidate("/a/large.jpg", 10, 10, 2, size=900)
    unknown = Candidate("/a/unknown.jpg", 10, 10, 0)
    assert sorted([small, unknown, large], key=order_key(parse_rules("largest-file"))) == [large, small, unknown]
    assert sorted([large, unknown, small], key=order_key(parse_rules("smallest-file"))) == [small, large, unknown]


def test_a_quality_40_copy_never_keeps_over_its_original(tmp_path: Path, tiny_model_file: Path) -> None:
    """Same pixels; the copy is older by file time, has a shorter path and kept the original's EXIF: only its
    quality tells it apart, and the default rules keep the original."""
    (tmp_path / "p").mkdir()
    exif = with_capture_time("2019:07:01 12:00:00")
    original, copy = tmp_path / "p" / "original-photo.jpg", tmp_path / "p" / "q40.jpg"
    photo(3, (160, 120)).save(original, quality=95, exif=exif)
    Image.open(original).save(copy, quality=40, exif=exif)
    set_mtime(copy, 2005)
    set_mtime(original, 2020)
    index(tmp_path, tiny_model_file)
    [group] = dedup(tmp_path)
    assert keeper_name(group) == "original-photo.jpg" and group["decided_by"] == "quality"
    [group] = dedup(tmp_path, "--keep", "oldest")
    assert keeper_name(group) == "q40.jpg", "the same capture time: the older file keeps"


def test_oldest_prefers_the_capture_time_over_the_file_time(tmp_path: Path, tiny_model_file: Path) -> None:
    """The scan written in 2001 was copied last year; the re-save without EXIF has an older file time."""
    (tmp_path / "p").mkdir()
    taken, resaved = tmp_path / "p" / "taken-2001.jpg", tmp_path / "p" / "resaved.jpg"
    photo(4, (160, 120)).save(taken, quality=92, exif=with_capture_time("2001:02:03 04:05:06", "+01:00"))
    photo(4, (160, 120)).save(resaved, quality=92)
    set_mtime(resaved, 2010)
    set_mtime(taken, 2024)
    index(tmp_path, tiny_model_file)
    [group] = dedup(tmp_path)
    assert keeper_name(group) == "taken-2001.jpg" and group["decided_by"] == "oldest"
    [group] = dedup(tmp_path, "--keep", "newest")
    assert keeper_name(group) == "resaved.jpg"


def test_a_corrupt_exif_block_falls_back_to_the_file_time(tmp_path: Path, tiny_model_file: Path) -> None:
    (tmp_path / "p").mkdir()
    broken, later = tmp_path / "p" / "broken-exif.jpg", tmp_path / "p" / "b.jpg"
    photo(5, (160, 120)).save(broken, quality=92, exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f")
    photo(5, (160, 120)).save(later, quality=92)
    set_mtime(broken, 2003)
    set_mtime(later, 2023)
    index(tmp_path, tiny_model_file)
    [group] = dedup(tmp_path)
    assert keeper_name(group) == "broken-exif.jpg" and group["decided_by"] == "oldest"


# --- formats -------------------------------------------------------------------------------------------------


def heif_writer() -> None:
    pillow_heif = pytest.importorskip("pillow_heif", reason="pillow-heif is not installed")
    pillow_heif.register_heif_opener()


@pytest.mark.parametrize("suffix", [".heic", ".avif"])
def test_heic_and_avif_are_indexed_and_queried(tmp_path: Path, tiny_model_file: Path, suffix: str) -> None:
    if suffix == ".heic":
        heif_writer()
    elif not features.check("avif"):
        pytest.skip("this Pillow was built without libavif")
    assert suffix in IMAGE_SUFFIXES
    (tmp_path / "p").mkdir()
    target = tmp_path / "p" / f"photo{suffix}"
    photo(6, (96, 72)).save(target, quality=90, exif=with_capture_time("2002:03:04 05:06:07", "+00:00"))
    photo(7, (96, 72)).save(tmp_path / "p" / "other.png")
    assert "added 2," in index(tmp_path, tiny_model_file)
    result = invoke("query", "--index", "idx", str(target), "-k", "1", "--json", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    [answer] = json.loads(result.stdout)
    [nearest] = answer["neighbours"]
    assert nearest["path"] == str(target) and nearest["distance"] < 1e-4
    if suffix == ".heic":  # Pillow's AVIF writer keeps no EXIF
        assert read_photo_facts(target).taken_ns == 1015218367 * 10**9


def dng(preview: Image.Image, orientation: int) -> bytes:
    """A minimal DNG as LibRaw reads it: IFD0 the camera's JPEG preview (turned as `orientation` says the camera
    was held), its SubIFD a 64x48 16-bit Bayer mosaic of noise."""
    jpeg = io.BytesIO()
    preview.save(jpeg, "JPEG", quality=90)
    mosaic = bytes(range(256)) * 24  # 64x48 16-bit samples
    pieces = [b"II*\x00", b"", jpeg.getvalue() + b"\x00" * (len(jpeg.getvalue()) % 2), mosaic]
    jpeg_at, mosaic_at = 8, 8 + len(pieces[2])

    def ifd(at: int, entries: list[tuple[int, int, list[int] | str]]) -> bytes:
        packed, extra = b"", b""
        data_at = at + 2 + 12 * len(entries) + 4
        for tag, kind, values in sorted(entries):
            raw = values.encode() + b"\x00" if isinstance(values, str) else struct.pack(
                "<" + {1: "B", 3: "H", 4: "I"}[kind] * len(values), *values)
            count = len(raw) if kind in (1, 2) else len(values)
            if len(raw) <= 4:
                packed += struct.pack("<HHI", tag, kind, count) + raw.ljust(4, b"\x00")
            else:
                packed += struct.pack("<HHII", tag, kind, count, data_at + len(extra))
                extra += raw + b"\x00" * (len(raw) % 2)
        return struct.pack("<H", len(entries)) + packed + b"\x00\x00\x00\x00" + extra

    first_at = mosaic_at + len(mosaic)
    common: list[tuple[int, int, list[int] | str]] = [
        (254, 4, [1]), (256, 4, [preview.width]), (257, 4, [preview.height]), (258, 3, [8, 8, 8]), (259, 3, [7]),
        (262, 3, [6]), (273, 4, [jpeg_at]), (277, 3, [3]), (278, 4, [preview.height]),
        (279, 4, [len(jpeg.getvalue())]), (271, 2, "Canon"), (272, 2, "Canon EOS 5D"), (274, 3, [orientation]),
        (50706, 1, [1, 4, 0, 0]), (50708, 2, "Canon EOS 5D")]
    sub_at = first_at + len(ifd(first_at, [*common, (330, 4, [0])]))
    pieces[1] = struct.pack("<I", first_at)
    raw_ifd = ifd(sub_at, [(254, 4, [0]), (256, 4, [64]), (257, 4, [48]), (258, 3, [16]), (259, 3, [1]),
                           (262, 3, [32803]), (273, 4, [mosaic_at]), (277, 3, [1]), (278, 4, [48]),
                           (279, 4, [len(mosaic)]), (33421, 3, [2, 2]), (33422, 1, [0, 1, 1, 2])])
    return b"".join(pieces) + ifd(first_at, [*common, (330, 4, [sub_at])]) + raw_ifd


def test_a_raw_file_is_read_through_its_preview_turned_as_the_camera_was(tmp_path: Path,
                                                                          tiny_model_file: Path) -> None:
    """The camera stores its preview as the sensor saw it and says how it was held: the RAW and the camera's
    upright JPEG beside it are one photo."""
    pytest.importorskip("rawpy", reason="rawpy is not installed")
    (tmp_path / "p").mkdir()
    upright = photo(8, (72, 96))
    upright.save(tmp_path / "p" / "IMG_0001.JPG", quality=75)
    (tmp_path / "p" / "IMG_0001.CR2").write_bytes(b"not a raw file at all")
    (tmp_path / "p" / "IMG_0001.DNG").write_bytes(dng(upright.rotate(90, expand=True), orientation=6))
    prep = Preprocessing((32, 32))
    decoded = decode_image(tmp_path / "p" / "IMG_0001.DNG", prep)
    assert (decoded.width, decoded.height) == (72, 96)
    with pytest.raises(DecodeError, match="not a RAW file LibRaw reads, or a truncated one"):
        decode_image((tmp_path / "p" / "IMG_0001.CR2").read_bytes(), prep, name="IMG_0001.CR2")
    result = invoke("index", "p", "--index", "idx", "--model", str(tiny_model_file), "--workers", "0",
                    cwd=tmp_path)
    assert "added 2," in result.output and "failed 1" in result.output and "LibRaw" in result.output
    [group] = dedup(tmp_path)
    assert keeper_name(group) == "IMG_0001.DNG" and group["decided_by"] == "quality", \
        "the RAW keeps over the camera's quality-75 JPEG"
    from retrieval.index import open_index
    from server.thumbnails import thumbnail

    index = open_index(tmp_path / "idx", None)
    [raw_id] = [row.id for row in index.store.indexed_images() if row.path.endswith(".DNG")]
    with Image.open(io.BytesIO(thumbnail(index, raw_id))) as small:
        assert small.size == (72, 96), "the page's thumbnail is the preview, upright, as the index saw it"


def test_files_simsearch_does_not_read_are_counted_by_extension(tmp_path: Path, tiny_model_file: Path) -> None:
    """Never skipped unsaid: videos, sidecars and documents by extension, the most common first; hidden files and
    the index's own directory stay out of it."""
    (tmp_path / "p" / "trip").mkdir(parents=True)
    photo(9).save(tmp_path / "p" / "a.png")
    names = ["clip1.mov", "clip2.MOV", "trip/clip3.mov", "a.xmp", "notes.txt", "README", "trip/b.mp4",
             ".DS_Store", "trip/.hidden.mov"]
    for name in names:
        (tmp_path / "p" / name).write_bytes(b"x")
    output = index(tmp_path, tiny_model_file)
    assert "not images simsearch reads: 3 .mov, 1 with no extension, 1 .mp4, 1 .txt, 1 .xmp" in output
    (tmp_path / "p" / "idx").mkdir()  # an index inside the folder: left out, its files not counted
    result = invoke("index", "p", "--index", "p/idx", "--model", str(tiny_model_file), "--workers", "0",
                    cwd=tmp_path)
    assert "3 .mov, 1 with no extension, 1 .mp4, 1 .txt, 1 .xmp" in result.output, result.output
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mov").write_bytes(b"x")
    result = invoke("index", "videos", "--index", "idx", cwd=tmp_path)
    assert result.exit_code == 2 and "no image files found" in result.output
    assert "(not images simsearch reads: 1 .mov)" in result.output


def test_many_extensions_are_summed_beyond_the_first_five() -> None:
    from retrieval.report import other_files_text

    counts = {".mov": 41, ".cr3x": 12, ".txt": 3, "": 2, ".a": 1, ".b": 1, ".c": 1}
    assert other_files_text(counts) == \
        "not images simsearch reads: 41 .mov, 12 .cr3x, 3 .txt, 2 with no extension, 1 .a, 2 more of 2 other types"
