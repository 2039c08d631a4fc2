"""Decoding: every mode ends as model-ready pixels; hostile files raise DecodeError."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import photo, png_header_bomb
from retrieval.errors import DecodeError
from retrieval.sources.images import Preprocessing, _high_bit_top, _to_mode, decode_image

RGB = Preprocessing(size=(16, 16), mode="RGB")


def halves(left: tuple[int, int, int], right: tuple[int, int, int], size: tuple[int, int] = (40, 20)) -> Image.Image:
    im = Image.new("RGB", size, left)
    im.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return im


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    halves((255, 0, 0), (0, 0, 255)).save(path, exif=exif, quality=95)
    decoded = decode_image(path, Preprocessing(size=(20, 40), mode="RGB"))
    assert (decoded.width, decoded.height) == (20, 40)
    top, bottom = decoded.pixels[5, 10], decoded.pixels[35, 10]
    assert top[0] > 200 and top[2] < 60, "red half should be on top after rotation"
    assert bottom[2] > 200 and bottom[0] < 60


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("RGB", (32, 32), (200, 30, 30)).convert("CMYK").save(path, quality=95)
    pixels = decode_image(path, RGB).pixels
    assert pixels.shape == (16, 16, 3)
    r, g, b = pixels[8, 8].astype(int)
    assert r > 150 and g < 80 and b < 80


def test_16_bit_png_is_scaled_not_saturated(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((16, 16), 32768, dtype=np.uint16)).save(path)
    value = decode_image(path, RGB).pixels[4, 4, 0]
    assert 120 <= value <= 135


def test_palette_png_transparency_is_flattened_onto_white(tmp_path: Path) -> None:
    path = tmp_path / "palette.png"
    im = Image.new("P", (16, 16), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.paste(1, (8, 0, 16, 16))
    im.save(path, transparency=0)
    pixels = decode_image(path, RGB).pixels
    assert pixels[8, 2].tolist() == [255, 255, 255]
    assert pixels[8, 13].tolist() == [255, 0, 0]


def test_gif_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    r, g, _ = decode_image(path, RGB).pixels[8, 8].astype(int)
    assert r > 200 and g < 50


def test_large_jpeg_uses_draft_and_reports_full_size(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (10, 120, 200)).save(path, quality=80)
    decoded = decode_image(path, Preprocessing(size=(224, 224)))
    assert (decoded.width, decoded.height) == (4000, 3000)
    assert decoded.pixels.shape == (224, 224, 3)


def test_grey_preprocessing_gives_one_channel(tmp_path: Path) -> None:
    path = tmp_path / "c.png"
    halves((0, 0, 0), (255, 255, 255)).save(path)
    pixels = decode_image(path, Preprocessing(size=(8, 8), mode="L")).pixels
    assert pixels.shape == (8, 8, 1)
    assert pixels[4, 0, 0] < 30 and pixels[4, 7, 0] > 225


@pytest.mark.parametrize("content, message", [
    (b"", "not a recognised image format"),
    (b"hello, I am text\n", "not a recognised image format"),
])
def test_non_images_are_refused(content: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_image(content, RGB)


def test_truncated_jpeg_is_refused() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, "JPEG")
    with pytest.raises(DecodeError):
        decode_image(buffer.getvalue()[: len(buffer.getvalue()) // 2], RGB)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    with pytest.raises(DecodeError, match="exceeds the limit"):
        decode_image(png_header_bomb(100_000, 100_000), RGB, max_pixels=50_000_000)


def test_an_ordinary_8_bit_image_decodes_as_a_resize_of_the_whole_image(tmp_path: Path) -> None:
    """8-bit RGB and grey images take the path they always took: their vectors do not change."""
    for mode in ("RGB", "L"):
        path = tmp_path / f"big-{mode}.png"
        photo(1, (3000, 2000)).convert(mode).save(path)
        for prep in (Preprocessing(size=(224, 224)), Preprocessing(size=(64, 48), mode="L", resample="lanczos")):
            with Image.open(path) as im:
                whole = np.asarray(im.convert(prep.mode).resize(prep.size, Image.Resampling[prep.resample.upper()]))
            assert np.array_equal(decode_image(path, prep).pixels.reshape(whole.shape), whole)


def deep(size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(np.asarray(photo(1, size).convert("L"), dtype=np.uint16) * 257)


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "RGBA", "LA", "P", "CMYK", "1"])
def test_other_modes_are_reduced_in_strips_to_the_same_picture(tmp_path: Path, mode: str) -> None:
    """Converted and box-reduced a strip at a time (a bounded peak), they stay within three grey levels of the whole
    image converted and resized, as they were before (two for all but a dithered bilevel image)."""
    if mode in ("I;16", "I", "F"):
        im = deep((1500, 1000)) if mode == "I;16" else deep((1500, 1000)).convert(mode)
    else:
        im = photo(1, (1500, 1000)).convert("RGBA" if mode in ("RGBA", "LA") else "RGB")
        if mode in ("RGBA", "LA"):
            im.putalpha(Image.linear_gradient("L").resize(im.size))
        im = im.convert(mode)
    path = tmp_path / ("deep.tiff" if mode in ("I", "F", "CMYK") else "deep.png")
    im.save(path)
    prep = Preprocessing(size=(96, 64))
    with Image.open(path) as opened:
        opened.load()
        whole = _to_mode(opened, "RGB", _high_bit_top(opened)).resize(prep.size, Image.Resampling.BILINEAR)
    decoded = decode_image(path, prep).pixels.astype(int)
    assert np.abs(decoded - np.asarray(whole, dtype=int)).max() <= 3
