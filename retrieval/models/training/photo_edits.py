"""The edits the default photo model trains on: what users do to a photo before it lands in a collection twice.

Written for training only, apart from the benchmark's edit families (benchmarks/edit_families.py), which no
training code imports: the benchmark scores the model on edits made by code it never saw. The kinds overlap by
design (people crop, caption, screenshot, filter and re-encode photos), the renderings do not: captions here are
meme bars and corner watermarks, not the benchmark's free-floating text and stickers; screenshots are a photo shown
inside an app's chrome, not letterboxing; filters are tone curves, not palette quantisation.

Each family maps (PIL RGB image, random.Random) to a new PIL RGB image; `user_edit` stacks one to three of them
after a random crop, which is what makes the positives hard.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

Edit = Callable[[Image.Image, random.Random], Image.Image]

_WORDS = ("weekend", "mood", "finally", "classic", "us", "home", "trip", "new", "look", "this", "again", "yes",
          "city", "morning", "2024", "vibes", "never", "forget", "check", "out", "wow", "real", "story", "time")


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, size))


def _grey(rng: random.Random, low: int, high: int) -> tuple[int, int, int]:
    value = rng.randint(low, high)
    return (value, value, value)


def crop(image: Image.Image, rng: random.Random) -> Image.Image:
    """A crop keeping 35-100 % of the area at an aspect ratio of 0.6-1.7 of the original's, maybe mirrored."""
    w, h = image.size
    area = rng.uniform(0.35, 1.0) * w * h
    aspect = rng.uniform(0.6, 1.7)
    cw = min(w, max(8, round((area * aspect) ** 0.5)))
    ch = min(h, max(8, round((area / aspect) ** 0.5)))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    out = image.crop((left, top, left + cw, top + ch))
    return ImageOps.mirror(out) if rng.random() < 0.3 else out


def meme_caption(image: Image.Image, rng: random.Random) -> Image.Image:
    """A white or black bar above and/or below the photo with a line of centred text, as meme and story tools add."""
    w, h = image.size
    bar = max(12, round(h * rng.uniform(0.08, 0.25)))
    top, bottom = rng.choice([(True, False), (False, True), (True, True)])
    fill = _grey(rng, 0, 20) if rng.random() < 0.4 else _grey(rng, 235, 255)
    ink = (255, 255, 255) if fill[0] < 128 else (0, 0, 0)
    canvas = Image.new("RGB", (w, h + bar * (top + bottom)), fill)
    canvas.paste(image, (0, bar if top else 0))
    draw = ImageDraw.Draw(canvas)
    font = _font(round(bar * 0.55))
    for y in ([bar // 2] if top else []) + ([h + bar * top + bar // 2] if bottom else []):
        draw.text((w // 2, y), _text(rng, rng.randint(1, 4)), fill=ink, font=font, anchor="mm")
    return canvas


def watermark(image: Image.Image, rng: random.Random) -> Image.Image:
    """Semi-transparent text in a corner or tiled across the photo, as stock sites and photographers mark."""
    out = image.convert("RGBA")
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    w, h = out.size
    alpha = rng.randint(70, 200)
    ink = (255, 255, 255, alpha) if rng.random() < 0.6 else (0, 0, 0, alpha)
    if rng.random() < 0.5:
        font = _font(round(min(w, h) * rng.uniform(0.04, 0.08)))
        corner = (rng.choice([0.03, 0.97]) * w, rng.choice([0.05, 0.95]) * h)
        draw.text(corner, "(c) " + _text(rng, 2), fill=ink, font=font, anchor="mm")
    else:
        font = _font(round(min(w, h) * rng.uniform(0.05, 0.1)))
        step = max(20, round(min(w, h) * 0.3))
        for y in range(0, h, step):
            for x in range(-step, w, step * 2):
                draw.text((x + (y // step % 2) * step, y), _text(rng, 1), fill=ink, font=font)
    return Image.alpha_composite(out, layer).convert("RGB")


def screenshot(image: Image.Image, rng: random.Random) -> Image.Image:
    """The photo as a phone or desktop screenshot shows it: scaled into an app's screen with a status bar, a title
    bar, side margins and a few lines of interface text."""
    w, h = image.size
    scale = rng.uniform(0.55, 0.9)
    shown = image.resize((max(8, round(w * scale)), max(8, round(h * scale))), Image.Resampling.BILINEAR)
    pad_x = round(w * rng.uniform(0.0, 0.12))
    header = round(h * rng.uniform(0.06, 0.18))
    footer = round(h * rng.uniform(0.05, 0.3))
    dark = rng.random() < 0.5
    canvas = Image.new("RGB", (shown.width + 2 * pad_x, shown.height + header + footer),
                       _grey(rng, 10, 40) if dark else _grey(rng, 230, 255))
    canvas.paste(shown, (pad_x, header))
    draw = ImageDraw.Draw(canvas)
    ink = (220, 220, 220) if dark else (30, 30, 30)
    font = _font(max(8, header // 3))
    draw.text((pad_x + 4, header // 4), f"{rng.randint(0, 23)}:{rng.randint(0, 59):02d}", fill=ink, font=font)
    draw.text((pad_x + 4, header // 2 + 2), _text(rng, 2), fill=ink, font=font)
    for line in range(max(0, footer // max(10, header // 2) - 1)):
        y = header + shown.height + 6 + line * max(10, header // 2)
        draw.text((pad_x + 4, y), _text(rng, rng.randint(2, 6)), fill=ink, font=font)
    return canvas


def tone_filter(image: Image.Image, rng: random.Random) -> Image.Image:
    """A photo app's filter: black and white, sepia, a warm or cool cast, faded blacks, punchy contrast or
    saturation, a vignette, or a soft or sharpened look."""
    kind = rng.choice(("mono", "sepia", "cast", "fade", "punch", "vignette", "soft"))
    if kind == "mono":
        return ImageOps.grayscale(image).convert("RGB")
    if kind == "sepia":
        return ImageOps.colorize(ImageOps.grayscale(image), (40, 26, 13), (255, 236, 200))
    pixels = np.asarray(image, dtype=np.float32)
    if kind == "cast":
        pixels = pixels * np.array([rng.uniform(0.8, 1.2) for _ in range(3)], dtype=np.float32)
    elif kind == "fade":
        lift = rng.uniform(20, 70)
        pixels = lift + pixels * (255 - lift) / 255
    elif kind == "punch":
        out = ImageEnhance.Contrast(image).enhance(rng.uniform(1.2, 1.8))
        return ImageEnhance.Color(out).enhance(rng.uniform(1.2, 2.0))
    elif kind == "vignette":
        h, w = pixels.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w]
        radius = ((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2) ** 0.5 / 0.7071
        pixels = pixels * (1 - rng.uniform(0.4, 0.8) * radius[..., None] ** 2)
    else:
        blurred = image.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 2.5)))
        return blurred if rng.random() < 0.5 else image.filter(ImageFilter.UnsharpMask(3, 200, 2))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def recompress(image: Image.Image, rng: random.Random) -> Image.Image:
    """Shrunk to 20-70 % and saved as JPEG at quality 8-50, as messaging apps forward photos; maybe enlarged back."""
    w, h = image.size
    scale = rng.uniform(0.2, 0.7)
    small = image.resize((max(8, round(w * scale)), max(8, round(h * scale))), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=rng.randint(8, 50))
    out = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return out.resize((w, h), Image.Resampling.BICUBIC) if rng.random() < 0.5 else out


FAMILIES: dict[str, Edit] = {
    "crop": crop, "meme_caption": meme_caption, "watermark": watermark, "screenshot": screenshot,
    "tone_filter": tone_filter, "recompress": recompress,
}
"""The training families by name."""


def user_edit(image: Image.Image, rng: random.Random) -> Image.Image:
    """A random crop (most of the time), then one to three other families in a random order."""
    out = crop(image, rng) if rng.random() < 0.7 else image
    others = [name for name in FAMILIES if name != "crop"]
    for name in rng.sample(others, rng.choice((1, 1, 2, 2, 3))):
        out = FAMILIES[name](out, rng)
    return out
