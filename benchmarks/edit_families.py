"""Families of near-duplicate edits of a photo, for benchmarks/neardup_photos.py.

Each family is a function `(image, rng) -> image`: an RGB PIL image in, an RGB PIL image out, every random choice
drawn from `rng` (a `random.Random`), so a copy is a pure function of the photo and the rng's state. Two kinds,
which a report must keep apart:

  (a) TRAINED_FAMILIES: "trained", the training augmentation itself (`retrieval.models.training.views.photo_views`,
      kornia): a model trained with it has seen this family's distribution, so its score here is flattered.
  (b) UNTRAINED_FAMILIES: edits written here with PIL/numpy only, none of which training produces:
      overlay      1-3 large caption lines (outlined meme-style text) and/or 1-4 stickers (faces, hearts, stars)
      border       a solid or coloured frame, a polaroid frame, letterboxing/padding to another aspect ratio in a
                   solid colour or over a blurred, enlarged copy of the photo (the "story" look)
      perspective  a perspective warp, each corner moved by up to 12 % of the side, the outside filled
      quantise     palette quantisation (6-32 colours, dithered or not), posterise, greyscale, sepia or duotone
      occlude      1-3 opaque patches (solid boxes, redaction bars, discs, noise, or a part of the photo cloned
                   over another), covering 10-30 % of the area in all
      reencode     a chain of 2-5 steps: rescales down to 25-60 % and back, JPEG at quality 15-50, WebP at 15-60
      collage      the photo on at least half of a canvas beside 1-3 filler images (from a FillerProvider:
                   CIFAR-10 test images, upscaled, which are no photo of any split)
      stacked      2 or 3 of the other (b) families, composed in an order the rng picks

`families(fillers)` gives the registry, name -> function, with the fillers bound into collage and stacked.
The builder saves every copy (as JPEG at quality 60-95, or PNG): that last step is not part of a family.
"""

from __future__ import annotations

import io
import math
import random
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

Family = Callable[[Image.Image, random.Random], Image.Image]

TRAINED_FAMILIES = ("trained",)
UNTRAINED_FAMILIES = ("overlay", "border", "perspective", "quantise", "occlude", "reencode", "collage", "stacked")
FAMILY_NAMES = TRAINED_FAMILIES + UNTRAINED_FAMILIES
STACKABLE = tuple(f for f in UNTRAINED_FAMILIES if f != "stacked")

TRAINED_MAX_SIDE = 640


class FillerProvider(Protocol):
    def __call__(self, rng: random.Random, count: int) -> list[Image.Image]:
        """`count` RGB filler images, chosen with `rng`."""
        ...


class CifarFillers:
    """Fillers from the CIFAR-10 *test* archive (no photo of any split), upscaled to `size` x `size` (bicubic).
    Picklable: the archive is opened lazily in each process."""

    def __init__(self, archive: Path, size: int = 256) -> None:
        self.archive = Path(archive)
        self.size = size
        self._names: list[str] | None = None
        self._zip: zipfile.ZipFile | None = None

    def __getstate__(self) -> dict:
        return {"archive": self.archive, "size": self.size, "_names": None, "_zip": None}

    def _open(self) -> tuple[zipfile.ZipFile, list[str]]:
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.archive)
            self._names = sorted(n for n in self._zip.namelist() if n.endswith(".jpg"))
        assert self._names is not None
        return self._zip, self._names

    def __call__(self, rng: random.Random, count: int) -> list[Image.Image]:
        archive, names = self._open()
        out = []
        for name in rng.sample(names, count):
            small = Image.open(io.BytesIO(archive.read(name))).convert("RGB")
            out.append(small.resize((self.size, self.size), Image.Resampling.BICUBIC))
        return out


# ---------------------------------------------------------------------------------------------------- (a) trained


def trained(image: Image.Image, rng: random.Random) -> Image.Image:
    """The training augmentation (`photo_views`, kornia) applied to the photo, its long side first brought down to
    at most 640 px; torch's generator is seeded from `rng`, so the result is deterministic."""
    import torch

    from retrieval.models.training.views import photo_views

    image = _fit_long_side(image, TRAINED_MAX_SIDE)
    w, h = image.size
    batch = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)[None].float() / 255.0
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(rng.getrandbits(63))
        with torch.no_grad():
            out = photo_views(h, w)(batch)
    finally:
        torch.random.set_rng_state(state)
    pixels = (out[0].clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(pixels), "RGB")


# ----------------------------------------------------------------------------------------------- (b) not trained

CAPTIONS = [
    "best day ever!!", "me on monday", "#nofilter", "#throwback", "SALE -50%", "© 2023 J. Smith Photography",
    "summer vibes", "when you see it", "DSC_0042.JPG", "12/08/2019 14:32", "lol", "NOT FOR RESALE", "family trip",
    "so cute", "wait for it...", "sample", "@travel_pics", "happy birthday!", "look at this", "FOR SALE",
    "Who did this?", "Monday mood", "Photo: Reuters", "www.example.com", "love it", "OMG", "original content",
]
TEXT_COLOURS = [(255, 255, 255), (0, 0, 0), (255, 221, 0), (255, 40, 40), (40, 200, 255), (255, 120, 220)]


def _fit_long_side(image: Image.Image, side: int) -> Image.Image:
    w, h = image.size
    if max(w, h) <= side:
        return image
    scale = side / max(w, h)
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)


def _random_colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, size))


def _draw_caption(draw: ImageDraw.ImageDraw, image_size: tuple[int, int], rng: random.Random, y: int,
                  size: int) -> int:
    """One caption line at height `y`, shrunk to fit the width; returns its height."""
    w, _ = image_size
    text = rng.choice(CAPTIONS)
    if rng.random() < 0.4:
        text = text.upper()
    font = _font(size)
    while size > 10 and draw.textlength(text, font=font) > 0.94 * w:
        size = int(size * 0.9)
        font = _font(size)
    width = draw.textlength(text, font=font)
    where = rng.random()
    x = (w - width) / 2 if where < 0.5 else (0.03 * w if where < 0.75 else w - width - 0.03 * w)
    x += rng.uniform(-0.02, 0.02) * w
    fill = rng.choice(TEXT_COLOURS)
    outline = (0, 0, 0) if sum(fill) > 300 else (255, 255, 255)
    stroke = max(1, size // 14) if rng.random() < 0.75 else 0
    if rng.random() < 0.2:  # a caption band behind the text
        pad = size // 5
        draw.rectangle((0, y - pad, w, y + size + pad), fill=outline)
        stroke = 0
    draw.text((x, y), text, fill=fill, font=font, stroke_width=stroke, stroke_fill=outline)
    return size


def _sticker(draw: ImageDraw.ImageDraw, rng: random.Random, cx: float, cy: float, r: float) -> None:
    kind = rng.choice(["smiley", "smiley", "heart", "star", "sunglasses", "blob"])
    line = max(2, int(r / 8))
    if kind in ("smiley", "sunglasses"):
        face = rng.choice([(255, 204, 0), (255, 214, 51), (250, 190, 30)])
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=face, outline=(120, 80, 0), width=max(1, line // 2))
        if kind == "smiley":
            for ex in (-0.35, 0.35):
                draw.ellipse((cx + ex * r - 0.12 * r, cy - 0.4 * r, cx + ex * r + 0.12 * r, cy - 0.1 * r),
                             fill=(60, 30, 0))
        else:
            draw.rounded_rectangle((cx - 0.75 * r, cy - 0.45 * r, cx - 0.05 * r, cy - 0.05 * r), radius=r * 0.15,
                                   fill=(10, 10, 10))
            draw.rounded_rectangle((cx + 0.05 * r, cy - 0.45 * r, cx + 0.75 * r, cy - 0.05 * r), radius=r * 0.15,
                                   fill=(10, 10, 10))
        draw.arc((cx - 0.55 * r, cy - 0.3 * r, cx + 0.55 * r, cy + 0.6 * r), 20, 160, fill=(60, 30, 0), width=line)
    elif kind == "heart":
        colour = rng.choice([(230, 20, 60), (255, 80, 150), (200, 0, 0)])
        draw.ellipse((cx - r, cy - 0.8 * r, cx, cy + 0.2 * r), fill=colour)
        draw.ellipse((cx, cy - 0.8 * r, cx + r, cy + 0.2 * r), fill=colour)
        draw.polygon([(cx - 0.97 * r, cy - 0.15 * r), (cx + 0.97 * r, cy - 0.15 * r), (cx, cy + r)], fill=colour)
    elif kind == "star":
        colour = rng.choice([(255, 215, 0), (255, 255, 255), (0, 200, 255), (255, 100, 0)])
        turn = rng.uniform(0, math.pi)
        points = [(cx + (r if k % 2 == 0 else 0.45 * r) * math.cos(turn + k * math.pi / 5),
                   cy + (r if k % 2 == 0 else 0.45 * r) * math.sin(turn + k * math.pi / 5)) for k in range(10)]
        draw.polygon(points, fill=colour, outline=(0, 0, 0), width=max(1, line // 2))
    else:  # a speech-bubble-like blob with a "!"
        colour = rng.choice([(255, 255, 255), (250, 250, 210)])
        draw.ellipse((cx - r, cy - 0.7 * r, cx + r, cy + 0.7 * r), fill=colour, outline=(0, 0, 0), width=line)
        draw.polygon([(cx - 0.3 * r, cy + 0.55 * r), (cx - 0.7 * r, cy + 1.1 * r), (cx + 0.05 * r, cy + 0.65 * r)],
                     fill=colour)
        font = _font(int(r))
        draw.text((cx, cy), "!", fill=(200, 0, 0), font=font, anchor="mm")


def overlay(image: Image.Image, rng: random.Random) -> Image.Image:
    """Large caption lines and/or emoji-like stickers drawn on the photo."""
    image = image.copy()
    w, h = image.size
    draw = ImageDraw.Draw(image)
    what = rng.random()
    lines = rng.randint(1, 3) if what < 0.75 else 0
    stickers = rng.randint(1, 4) if what > 0.4 or lines == 0 else 0
    if lines:
        size = max(12, int(h * rng.uniform(0.07, 0.13)))
        layout = rng.choice(["meme", "top", "bottom", "anywhere"])
        for k in range(lines):
            if layout == "meme":  # first line at the top, the rest at the bottom
                y = 0.03 * h if k == 0 else h - (lines - k) * 1.25 * size - 0.03 * h
            elif layout == "top":
                y = 0.03 * h + k * 1.25 * size
            elif layout == "bottom":
                y = h - (lines - k) * 1.25 * size - 0.03 * h
            else:
                y = rng.uniform(0, max(1.0, h - size))
            _draw_caption(draw, (w, h), rng, int(y), size)
    for _ in range(stickers):
        r = min(w, h) * rng.uniform(0.06, 0.14)
        _sticker(draw, rng, rng.uniform(r, w - r), rng.uniform(r, h - r), r)
    return image


def _blurred_fill(image: Image.Image, size: tuple[int, int], rng: random.Random) -> Image.Image:
    """`image` enlarged to cover `size`, centre-cropped, blurred and a little darkened (the background of a story
    post or a letterboxed video)."""
    cw, ch = size
    scale = max(cw / image.width, ch / image.height)
    small = image.resize((max(1, image.width // 8), max(1, image.height // 8)), Image.Resampling.BILINEAR)
    big = small.resize((max(cw, math.ceil(image.width * scale)), max(ch, math.ceil(image.height * scale))),
                       Image.Resampling.BILINEAR)
    left, top = (big.width - cw) // 2, (big.height - ch) // 2
    background = big.crop((left, top, left + cw, top + ch))
    background = background.filter(ImageFilter.GaussianBlur(radius=max(2, min(cw, ch) / 40)))
    return ImageEnhance.Brightness(background).enhance(rng.uniform(0.6, 0.95))


def border(image: Image.Image, rng: random.Random) -> Image.Image:
    """A frame, or padding to another aspect ratio (solid colour or a blurred copy of the photo)."""
    w, h = image.size
    kind = rng.choice(["frame", "frame", "polaroid", "pad", "pad", "blurred"])
    colour = rng.choice([(255, 255, 255), (0, 0, 0), (20, 20, 20), (240, 240, 235)]) if rng.random() < 0.6 \
        else _random_colour(rng)
    if kind == "frame":
        t = [int(min(w, h) * rng.uniform(0.04, 0.15))] * 4
        if rng.random() < 0.3:
            t = [int(min(w, h) * rng.uniform(0.03, 0.18)) for _ in range(4)]
        canvas = Image.new("RGB", (w + t[0] + t[2], h + t[1] + t[3]), colour)
        canvas.paste(image, (t[0], t[1]))
        if rng.random() < 0.4:  # a thin inner line
            draw = ImageDraw.Draw(canvas)
            line = max(1, min(w, h) // 150)
            draw.rectangle((t[0] - 2 * line, t[1] - 2 * line, t[0] + w + 2 * line - 1, t[1] + h + 2 * line - 1),
                           outline=_random_colour(rng), width=line)
        return canvas
    if kind == "polaroid":
        side = int(min(w, h) * rng.uniform(0.05, 0.08))
        bottom = int(min(w, h) * rng.uniform(0.2, 0.3))
        canvas = Image.new("RGB", (w + 2 * side, h + side + bottom), rng.choice([(250, 250, 245), (255, 255, 255)]))
        canvas.paste(image, (side, side))
        return canvas
    ratio = rng.choice([1.0, 9 / 16, 16 / 9, 4 / 5, 3 / 4, 4 / 3, 2.0])  # width / height of the canvas
    if abs(ratio - w / h) < 0.15 * w / h:  # close to the photo's own: pick the other orientation instead
        ratio = 1 / ratio if abs(1 / ratio - w / h) >= 0.15 * w / h else (9 / 16 if w >= h else 16 / 9)
    if ratio > w / h:
        cw, ch = math.ceil(h * ratio), h
    else:
        cw, ch = w, math.ceil(w / ratio)
    margin = rng.uniform(0.0, 0.06) if kind == "blurred" else 0.0  # some posts also shrink the photo a little
    cw, ch = int(cw * (1 + margin)), int(ch * (1 + margin))
    canvas = _blurred_fill(image, (cw, ch), rng) if kind == "blurred" else Image.new("RGB", (cw, ch), colour)
    where = rng.random()
    x = (cw - w) // 2 if where < 0.8 else rng.randint(0, cw - w)
    y = (ch - h) // 2 if where < 0.8 else rng.randint(0, ch - h)
    canvas.paste(image, (x, y))
    return canvas


def _perspective_coefficients(source: list[tuple[float, float]], target: list[tuple[float, float]]) -> list[float]:
    """The 8 coefficients PIL's PERSPECTIVE transform wants: they map each `target` (output) corner to the
    corresponding `source` (input) corner."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(target, source):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return np.linalg.solve(np.asarray(rows, dtype=np.float64), np.asarray(rhs, dtype=np.float64)).tolist()


def perspective(image: Image.Image, rng: random.Random, max_shift: float = 0.12) -> Image.Image:
    """A perspective warp (a photo of the photo, a skewed screenshot): each corner moves by up to `max_shift` of
    the side, inwards mostly; what falls outside the photo is filled with a solid colour or stretched edge."""
    w, h = image.size
    corners = [(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)]
    signs = [(1, 1), (-1, 1), (-1, -1), (1, -1)]  # inwards for each corner
    outwards = 0.02  # a corner may also move out a little (cropping the photo there)
    moved = [(x + sx * rng.uniform(-outwards, max_shift) * w, y + sy * rng.uniform(-outwards, max_shift) * h)
             for (x, y), (sx, sy) in zip(corners, signs)]
    coefficients = _perspective_coefficients(corners, moved)
    fill = rng.choice([(0, 0, 0), (255, 255, 255), (128, 128, 128), _random_colour(rng)])
    out = image.transform((w, h), Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BICUBIC,
                          fillcolor=fill)
    if rng.random() < 0.3:  # crop to the warped photo's bounding box, as a "straightened" scan would
        xs, ys = [p[0] for p in moved], [p[1] for p in moved]
        box = (max(0, int(min(xs))), max(0, int(min(ys))), min(w, math.ceil(max(xs))), min(h, math.ceil(max(ys))))
        out = out.crop(box)
    return out


def quantise(image: Image.Image, rng: random.Random) -> Image.Image:
    """Fewer colours: palette quantisation, posterise, greyscale (not for a photo that is grey already), sepia
    or a duotone."""
    kinds = ["palette", "palette", "posterise", "greyscale", "sepia", "duotone"]
    small = np.asarray(image.resize((64, 64), Image.Resampling.BILINEAR), dtype=np.int16)
    if int(np.abs(small - small.mean(axis=2, keepdims=True)).max()) <= 3:
        kinds.remove("greyscale")
    kind = rng.choice(kinds)
    if kind == "palette":
        colours = rng.choice([6, 8, 12, 16, 24, 32])
        dither = Image.Dither.FLOYDSTEINBERG if rng.random() < 0.5 else Image.Dither.NONE
        method = rng.choice([Image.Quantize.MEDIANCUT, Image.Quantize.MAXCOVERAGE, Image.Quantize.FASTOCTREE])
        return image.quantize(colours, method=method, dither=dither).convert("RGB")
    if kind == "posterise":
        return ImageOps.posterize(image, rng.choice([2, 3, 3, 4]))
    grey = ImageOps.grayscale(image)
    if rng.random() < 0.5:
        grey = ImageOps.autocontrast(grey, cutoff=rng.uniform(0, 2))
    if kind == "greyscale":
        return grey.convert("RGB")
    if kind == "sepia":
        return ImageOps.colorize(grey, black=(40, 26, 13), white=(255, 240, 192), mid=(160, 120, 80))
    dark, light = _random_colour(rng), _random_colour(rng)
    if sum(dark) > sum(light):
        dark, light = light, dark
    return ImageOps.colorize(grey, black=tuple(c // 3 for c in dark), white=light)


def _place(rng: random.Random, covered: np.ndarray, size: tuple[int, int], tries: int = 24) -> tuple[int, int]:
    """A top-left corner for a `size` patch that overlaps what is `covered` the least (of `tries` random ones)."""
    h, w = covered.shape
    pw, ph = size
    best, best_overlap = (0, 0), None
    for _ in range(tries):
        x, y = rng.randint(0, w - pw), rng.randint(0, h - ph)
        overlap = int(covered[y:y + ph, x:x + pw].sum())
        if best_overlap is None or overlap < best_overlap:
            best, best_overlap = (x, y), overlap
        if overlap == 0:
            break
    return best


def occlude(image: Image.Image, rng: random.Random) -> Image.Image:
    """1-3 opaque patches covering 10-30 % of the area in all (boxes, bars, discs, noise, cloned regions),
    placed so that they overlap each other as little as they can."""
    image = image.copy()
    w, h = image.size
    target = rng.uniform(0.10, 0.30) * w * h
    count = rng.randint(1, 3)
    weights = [rng.uniform(0.5, 1.5) for _ in range(count)]
    covered = np.zeros((h, w), dtype=bool)
    for weight in weights:
        area = target * weight / sum(weights)
        kind = rng.choice(["box", "box", "bar", "disc", "noise", "clone"])
        if kind == "disc":  # the ellipse inscribed in a box of 4 / pi the area
            area *= 4 / math.pi
        aspect = rng.uniform(3.0, 6.0) if kind == "bar" else rng.uniform(0.5, 2.0)  # width / height
        pw = min(w, max(2, round(math.sqrt(area * aspect))))
        ph = min(h, max(2, round(area / pw)))
        x, y = _place(rng, covered, (pw, ph))
        draw = ImageDraw.Draw(image)
        if kind in ("box", "bar"):
            colour = (0, 0, 0) if kind == "bar" or rng.random() < 0.3 else _random_colour(rng)
            draw.rectangle((x, y, x + pw - 1, y + ph - 1), fill=colour)
            covered[y:y + ph, x:x + pw] = True
        elif kind == "disc":
            draw.ellipse((x, y, x + pw - 1, y + ph - 1), fill=_random_colour(rng))
            yy, xx = np.ogrid[:ph, :pw]
            inside = ((xx - (pw - 1) / 2) / (pw / 2)) ** 2 + ((yy - (ph - 1) / 2) / (ph / 2)) ** 2 <= 1
            covered[y:y + ph, x:x + pw] |= inside
        elif kind == "noise":
            noise = np.random.default_rng(rng.getrandbits(64)).integers(0, 256, (ph, pw, 3), dtype=np.uint8)
            image.paste(Image.fromarray(noise, "RGB"), (x, y))
            covered[y:y + ph, x:x + pw] = True
        else:  # clone another part of the photo over this one
            sx, sy = rng.randint(0, w - pw), rng.randint(0, h - ph)
            image.paste(image.crop((sx, sy, sx + pw, sy + ph)), (x, y))
            covered[y:y + ph, x:x + pw] = True
    return image


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _webp(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "WEBP", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


RESAMPLERS = [Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC,
              Image.Resampling.LANCZOS, Image.Resampling.BOX]


def reencode(image: Image.Image, rng: random.Random) -> Image.Image:
    """A chain of 2-5 lossy steps (forwarded, downloaded and re-uploaded): rescales down to 25-60 % and back,
    JPEG at quality 15-50 and WebP at 15-60; at least one rescale and one lossy encode."""
    steps = ["rescale", rng.choice(["jpeg", "webp"])]
    steps += [rng.choice(["rescale", "jpeg", "jpeg", "webp"]) for _ in range(rng.randint(0, 3))]
    rng.shuffle(steps)
    w, h = image.size
    for step in steps:
        if step == "rescale":
            scale = rng.uniform(0.25, 0.60)
            small = image.resize((max(8, round(w * scale)), max(8, round(h * scale))), rng.choice(RESAMPLERS))
            image = small.resize((w, h), rng.choice(RESAMPLERS[1:]))
        elif step == "jpeg":
            image = _jpeg(image, rng.randint(15, 50))
        else:
            image = _webp(image, rng.randint(15, 60))
    return image


def _cover(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` scaled to cover `size` and centre-cropped to it."""
    cw, ch = max(1, size[0]), max(1, size[1])
    scale = max(cw / image.width, ch / image.height)
    big = image.resize((max(cw, math.ceil(image.width * scale)), max(ch, math.ceil(image.height * scale))),
                       Image.Resampling.BICUBIC)
    left, top = (big.width - cw) // 2, (big.height - ch) // 2
    return big.crop((left, top, left + cw, top + ch))


def collage(image: Image.Image, rng: random.Random, fillers: FillerProvider) -> Image.Image:
    """The photo beside a row or column of 1-3 filler images, on 50-75 % of the canvas, with gutters."""
    w, h = image.size
    count = rng.randint(1, 3)
    share = rng.uniform(0.5, 0.75)  # the photo's share of the canvas area, gutters included
    gutter = int(min(w, h) * rng.uniform(0.0, 0.03))
    background = rng.choice([(255, 255, 255), (0, 0, 0), (240, 240, 240), _random_colour(rng)])
    horizontal = rng.random() < (0.7 if w <= 1.3 * h else 0.35)  # fillers beside a portrait, below a landscape
    pictures = fillers(rng, count)
    if horizontal:
        # canvas (w + gutter + strip + 2 gutters) x (h + 2 gutters); photo area share >= `share`
        height = h + 2 * gutter
        strip = max(8, int(w * h / (share * height) - w - 3 * gutter))
        canvas = Image.new("RGB", (w + strip + 3 * gutter, height), background)
        photo_first = rng.random() < 0.5
        px = gutter if photo_first else 2 * gutter + strip
        sx = 2 * gutter + w if photo_first else gutter
        canvas.paste(image, (px, gutter))
        cell = (h - (count - 1) * gutter) / count
        for k, picture in enumerate(pictures):
            top = gutter + round(k * (cell + gutter))
            canvas.paste(_cover(picture, (strip, round(cell))), (sx, top))
    else:
        width = w + 2 * gutter
        strip = max(8, int(w * h / (share * width) - h - 3 * gutter))
        canvas = Image.new("RGB", (width, h + strip + 3 * gutter), background)
        photo_first = rng.random() < 0.6
        py = gutter if photo_first else 2 * gutter + strip
        sy = 2 * gutter + h if photo_first else gutter
        canvas.paste(image, (gutter, py))
        cell = (w - (count - 1) * gutter) / count
        for k, picture in enumerate(pictures):
            left = gutter + round(k * (cell + gutter))
            canvas.paste(_cover(picture, (round(cell), strip)), (left, sy))
    return canvas


def stacked_choice(rng: random.Random, pool: tuple[str, ...] = STACKABLE) -> list[str]:
    """The families `stacked` composes, in order: its first draws from `rng`, so a caller holding a copy of the
    rng's state can tell which were used. Border and collage, which both shrink the photo's share of the
    canvas, are never drawn together (the photo would be left on a quarter of it or less)."""
    count = rng.choice([2, 2, 3])
    while True:
        names = rng.sample(pool, count)
        if not {"border", "collage"} <= set(names):
            return names


def stacked(image: Image.Image, rng: random.Random, fillers: FillerProvider | None) -> Image.Image:
    """2 or 3 distinct other (b) families, composed in an order drawn from `rng` (collage only with fillers)."""
    table = _untrained_table(fillers)
    for name in stacked_choice(rng, tuple(n for n in STACKABLE if n in table)):
        image = table[name](image, rng)
    return image


def _untrained_table(fillers: FillerProvider | None) -> dict[str, Family]:
    table: dict[str, Family] = {
        "overlay": overlay, "border": border, "perspective": perspective, "quantise": quantise,
        "occlude": occlude, "reencode": reencode,
    }
    if fillers is not None:
        table["collage"] = lambda image, rng: collage(image, rng, fillers)
    return table


def families(fillers: FillerProvider | None) -> dict[str, Family]:
    """Every family by name, in FAMILY_NAMES order, with `fillers` bound into collage and stacked. With None,
    collage is left out (and stacked composes the others only)."""
    table: dict[str, Family] = {"trained": trained, **_untrained_table(fillers)}
    table["stacked"] = lambda image, rng: stacked(image, rng, fillers)
    return {name: table[name] for name in FAMILY_NAMES if name in table}
