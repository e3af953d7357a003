"""Synthetic phone photos of handwritten digits: for benchmarks, tests and the base recipe's photo stage.

MNIST digits (the benchmarks draw the *test* set, training the *training* set) are drawn as ink
onto simulated paper photographed with a phone: paper tint
and texture, plain/ruled/squared paper, the paper edge and the desk, blue/black/red ink or
pencil, chalk-like light ink on dark boards, light gradients, vignetting and soft shadows, small
rotation and perspective, blur, sensor noise, JPEG artefacts, EXIF orientation, and final sizes
from 100 px to 4000 px. Rows of several digits get uneven spacing, baseline and size.

    python -m core.sim.photo_sim --out /tmp/photos --count 24   # writes a few samples to look at
    python -m core.sim.photo_sim --style thin --sheet var/thin_sim_sheet.png   # or a contact sheet of them

Two styles: "classic" (the default, above) and "thin", where core.sim.pen_sim re-draws each digit along
its centre line with a real pen's width (ballpoint, gel, pencil, marker) on paper, sticky notes or
cheque security print, as tight 30-80 px scans, photo crops or 1000-4000 px phone photos.
"""

from __future__ import annotations

import argparse
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from core.sim import pen_sim
from core.sim.pen_sim import rule_lines, smooth_noise

# EXIF orientation tag value -> the rotation (np.rot90 k, and whether to mirror) that turns the
# upright image into the stored pixels, so that a viewer applying the tag shows it upright.
_EXIF_STORE = {3: (2, False), 6: (1, False), 8: (3, False), 2: (0, True)}


@dataclass
class Photo:
    data: bytes
    labels: list[int]
    traits: dict[str, object] = field(default_factory=dict)
    # With `truth`: how much ink covers each pixel (uint8 0..255, upright, the photo's size), what
    # core.vision.ink_net learns to find.
    ink: np.ndarray | None = None

    @property
    def text(self) -> str:
        return "".join(str(d) for d in self.labels)


def _ink_crop(digit: np.ndarray) -> np.ndarray:
    """The digit's bounding box (ink in [0, 1]) with a 2 px border."""
    ys, xs = np.nonzero(digit > 30)
    return np.pad(digit[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1].astype(np.float32) / 255, 2)


def _digit_alpha(rng: np.random.Generator, digit: np.ndarray, height: int) -> np.ndarray:
    """An MNIST digit (white on black) as an ink alpha map about `height` pixels tall."""
    crop = _ink_crop(digit)
    scale = height / crop.shape[0]
    width = max(2, round(crop.shape[1] * scale * rng.uniform(0.85, 1.15)))
    big = cv2.resize(crop, (width, max(2, round(crop.shape[0] * scale))), interpolation=cv2.INTER_CUBIC)
    # Pen width: a low cut-off thickens the stroke, a high one thins it (ballpoint vs marker).
    low = rng.uniform(0.15, 0.55)
    return np.clip((big - low) / 0.25, 0, 1)


def _layout_size(rng: np.random.Generator, n: int) -> tuple[int, int, float]:
    """Final (width, height) and digit height in final pixels; at least ~22 px per digit."""
    aspect = rng.choice([4 / 3, 3 / 4, 16 / 9, 9 / 16, 1.0])
    long_side = math.exp(rng.uniform(math.log(100), math.log(4000)))
    width = long_side if aspect >= 1 else long_side * aspect
    if n == 1:
        digit_h = rng.uniform(0.18, 0.7) * min(width, width / aspect)
    else:
        digit_h = rng.uniform(0.4, 0.85) * width / (n * 0.95)
        digit_h = min(digit_h, 0.6 * width / aspect)
    grow = max(1.0, 22 / digit_h)
    return round(width * grow), round(width / aspect * grow), digit_h * grow


def _paper(rng: np.random.Generator, height: int, width: int, digit_h: float, dark: bool) -> tuple[np.ndarray, str]:
    if dark:  # blackboard, dark slate, a black screen
        base = rng.choice([[40, 55, 45], [30, 30, 32], [15, 15, 15], [45, 40, 60]]) + rng.uniform(-10, 10, 3)
    else:  # white, cream, yellowish, grey recycled, light blue
        base = rng.choice([[250, 250, 248], [245, 238, 220], [250, 244, 200], [215, 215, 210], [225, 235, 245]])
        base = base + rng.uniform(-12, 5, 3)
    paper = np.empty((height, width, 3), np.float32)
    paper[:] = base
    paper += smooth_noise(rng, height, width, 6)[..., None] * rng.uniform(0, 10)
    paper += rng.normal(0, rng.uniform(0.5, 3), (height, width, 1)).astype(np.float32)
    if dark:
        return paper, "board"
    style = rng.choice(["plain", "ruled", "squared"], p=[0.4, 0.35, 0.25])
    paper = rule_lines(rng, paper, digit_h, str(style))
    return paper, str(style)


def _ink_colour(rng: np.random.Generator, dark: bool) -> tuple[np.ndarray, str]:
    if dark:
        return np.array([235, 235, 230]) + rng.uniform(-30, 15, 3), "chalk"
    kind = rng.choice(["black", "blue", "red", "pencil"], p=[0.35, 0.35, 0.2, 0.1])
    colours = {"black": [25, 25, 30], "blue": [30, 45, 150], "red": [185, 30, 35], "pencil": [95, 95, 100]}
    return np.asarray(colours[kind], np.float64) + rng.uniform(-15, 25, 3), str(kind)


def _lighting(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, bool]:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (xx * math.cos(angle) + yy * math.sin(angle)) / max(height, width)
    light = 1 - rng.uniform(0, 0.45) * (ramp - ramp.min())
    cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
    radius = ((yy - cy) ** 2 + (xx - cx) ** 2) / (max(height, width) ** 2)
    light *= 1 - rng.uniform(0, 0.5) * radius
    shadow = rng.random() < 0.5
    if shadow:  # the shadow of a hand or a phone: a large shape entering from one side
        mask: np.ndarray = np.zeros((height, width), np.float32)
        size = max(height, width)
        centre = np.array([width, height], np.float64) * rng.uniform(0.1, 0.9, 2)
        angle = rng.uniform(0, 2 * math.pi)
        # A rounded blade: a wide wedge (hand, phone) with its tip near `centre`.
        spread = rng.uniform(0.35, 1.2)
        far = centre + 3 * size * np.array([math.cos(angle), math.sin(angle)])
        side = 3 * size * np.array([-math.sin(angle), math.cos(angle)]) * math.tan(spread / 2)
        polygon = np.array([centre, far + side, far - side])
        cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 1.0)
        soft = rng.random() < 0.8
        sigma = size * (rng.uniform(0.015, 0.07) if soft else rng.uniform(0.004, 0.015))
        mask = cv2.GaussianBlur(mask, (0, 0), sigma)
        light *= 1 - rng.uniform(0.2, 0.55) * mask
    return light, shadow


@dataclass
class _Row:
    """Where a row of digits landed on the working canvas."""
    ink: np.ndarray
    x0: float
    x1: float
    cy: float
    digit_h: float


def _place_row(rng: np.random.Generator, alphas: list[np.ndarray], gaps: list[float], size: tuple[int, int],
               digit_h: float, fit: float = 0.86, shift: tuple[float, float] = (0.0, 0.0)) -> _Row:
    """Digit alphas written left to right on a (width, height) canvas, the row at most `fit` of its
    width; `shift` (in digit heights) moves the row, also partly out of the frame."""
    cw, ch = size
    ink = np.zeros((ch, cw), np.float32)
    row_w = sum(a.shape[1] for a in alphas) + sum(gaps)
    if row_w > fit * cw:  # keep the whole row inside the frame, also after rotation
        shrink = fit * cw / row_w
        alphas = [cv2.resize(a, (max(2, round(a.shape[1] * shrink)), max(2, round(a.shape[0] * shrink))))
                  for a in alphas]
        gaps = [g * shrink for g in gaps]
        digit_h *= shrink
        row_w = sum(a.shape[1] for a in alphas) + sum(gaps)
    x = (cw - row_w) / 2 + rng.uniform(-0.3, 0.3) * max(0.0, 0.9 * cw - row_w) + shift[0] * digit_h
    cy = ch / 2 + rng.uniform(-0.25, 0.25) * max(0.0, 0.9 * ch - 1.3 * digit_h) + shift[1] * digit_h
    x_start = x
    for i, alpha in enumerate(alphas):
        y = cy - alpha.shape[0] / 2 + rng.uniform(-0.08, 0.08) * digit_h
        x0, y0 = round(x), round(y)
        ys = slice(max(0, y0), min(ch, y0 + alpha.shape[0]))
        xs = slice(max(0, x0), min(cw, x0 + alpha.shape[1]))
        part = alpha[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0]
        ink[ys, xs] = np.maximum(ink[ys, xs], part)
        x += alpha.shape[1] + (gaps[i] if i < len(gaps) else 0)
    return _Row(ink, x_start, x, cy, digit_h)


def _desk(rng: np.random.Generator, image: np.ndarray, row: _Row) -> np.ndarray:
    """The paper does not fill the frame: a darker desk shows at one edge, clear of the writing."""
    ch, cw = image.shape[:2]
    desk_colour = rng.choice([[90, 70, 50], [60, 60, 65], [150, 120, 90], [30, 30, 30]])
    margin: np.ndarray = np.zeros((ch, cw), np.float32)
    side = rng.integers(4)
    # The paper edge stays clear of the writing: at most the free space between row and border.
    row_y0, row_y1 = row.cy - 0.7 * row.digit_h, row.cy + 0.7 * row.digit_h
    free = [row.x0, cw - row.x1, row_y0, ch - row_y1][side]
    depth = round(max(0.0, free) * rng.uniform(0.2, 0.8))
    if side == 0:
        margin[:, :depth] = 1
    elif side == 1:
        margin[:, cw - depth:] = 1
    elif side == 2:
        margin[:depth] = 1
    else:
        margin[ch - depth:] = 1
    margin = cv2.GaussianBlur(margin, (0, 0), 1.0)[..., None]
    return image * (1 - margin) + np.asarray(desk_colour, np.float32) * margin


@dataclass(frozen=True)
class _Camera:
    tilt: float = 7.0  # degrees, at most
    perspective: float = 0.05  # corner movement, fraction of the frame
    shake: float = 0.15  # probability of hand shake


def _camera(rng: np.random.Generator, image: np.ndarray, camera: _Camera, blur_scale: float,
            shake_ref: float) -> tuple[np.ndarray, float, np.ndarray]:
    """Rotation and perspective (the paper still filling the frame), blur and hand shake; and the
    rotation and the homography (to move the true ink along)."""
    ch, cw = image.shape[:2]
    rotate = rng.uniform(-camera.tilt, camera.tilt)
    matrix = cv2.getRotationMatrix2D((cw / 2, ch / 2), rotate, 1.0)
    src = np.array([[0, 0], [cw, 0], [cw, ch], [0, ch]], np.float32)
    dst = src + rng.uniform(-camera.perspective, camera.perspective, (4, 2)).astype(np.float32) * [cw, ch]
    dst = cv2.transform(dst[None], matrix)[0].astype(np.float32)
    homography = cv2.getPerspectiveTransform(src, dst)
    image = cv2.warpPerspective(image, homography, (cw, ch), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REFLECT)
    blur = rng.uniform(0, 1.4) * blur_scale
    if blur > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), blur)
    if rng.random() < camera.shake:
        length = max(2, round(shake_ref * rng.uniform(0.02, 0.08)))
        kernel: np.ndarray = np.zeros((length, length), np.float32)
        kernel[length // 2] = 1 / length
        rot = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), rng.uniform(0, 180), 1)
        kernel = cv2.warpAffine(kernel, rot, (length, length))
        image = cv2.filter2D(image, -1, kernel / max(kernel.sum(), 1e-6))
    return image, rotate, homography


def _true_ink(ink: np.ndarray, homography: np.ndarray, width: int, height: int) -> np.ndarray:
    """The ink alpha as the camera saw it (warped, not blurred), at the photo's final size."""
    ch, cw = ink.shape
    warped = cv2.warpPerspective(ink, homography, (cw, ch), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    interpolation = cv2.INTER_AREA if width < cw else cv2.INTER_LINEAR
    final = np.clip(cv2.resize(warped, (width, height), interpolation=interpolation), 0, 1)
    return np.round(final * 255).astype(np.uint8)


def _sensor(rng: np.random.Generator, image: np.ndarray, width: int, height: int, fast: bool = False) -> np.ndarray:
    """Resized to the final size, with sensor noise, as 8-bit RGB (`fast`: float32 noise, other draws)."""
    interpolation = cv2.INTER_AREA if width < image.shape[1] else cv2.INTER_LINEAR
    image = cv2.resize(image, (width, height), interpolation=interpolation)
    noise = rng.uniform(1, 7)
    if fast:
        image = image + rng.standard_normal((height, width, 1), np.float32) * np.float32(noise)
    else:
        image += rng.normal(0, noise, (height, width, 1)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def _encoded(rng: np.random.Generator, rgb: np.ndarray, labels: list[int], traits: dict[str, object],
             ink: np.ndarray | None = None) -> Photo:
    fmt, exif = _encode_choice(rng)
    traits["format"], traits["exif"] = fmt, exif
    return Photo(_encode(rgb, fmt, exif, rng), list(labels), traits, ink)


def _working_size(width: int, height: int, digit_h: float, cap: int) -> tuple[int, int, float]:
    """Composition happens at most `cap` px on the long side; resized to the final size at the end."""
    scale = min(1.0, cap / max(width, height))
    return max(8, round(width * scale)), max(8, round(height * scale)), digit_h * scale


def _render_classic(rng: np.random.Generator, digits: list[np.ndarray], labels: list[int], truth: bool) -> Photo:
    """Upscaled MNIST strokes (10-15% of the digit's height wide) on paper or boards."""
    n = len(digits)
    width, height, digit_h = _layout_size(rng, n)
    cw, ch, cdh = _working_size(width, height, digit_h, 1000)
    dark = rng.random() < 0.15
    paper, paper_style = _paper(rng, ch, cw, cdh, dark)
    alphas = [_digit_alpha(rng, d, max(6, round(cdh * rng.uniform(0.88, 1.12)))) for d in digits]
    gaps = [cdh * rng.uniform(0.08, 0.55) for _ in range(n - 1)]
    row = _place_row(rng, alphas, gaps, (cw, ch), cdh)
    colour, ink_kind = _ink_colour(rng, dark)
    opacity = rng.uniform(0.75, 1.0) if ink_kind != "pencil" else rng.uniform(0.6, 0.85)
    a = (row.ink * opacity)[..., None]
    image = paper * (1 - a) + colour.astype(np.float32) * a
    desk = not dark and rng.random() < 0.2
    if desk:
        image = _desk(rng, image, row)
    light, shadow = _lighting(rng, ch, cw)
    image *= light[..., None]
    image, rotate, homography = _camera(rng, image, _Camera(), max(1.0, row.digit_h / 60), row.digit_h)
    rgb = _sensor(rng, image, width, height)
    ink = _true_ink(row.ink * opacity, homography, width, height) if truth else None
    traits: dict[str, object] = {"size": (width, height), "dark": dark, "paper": paper_style, "ink": ink_kind,
                                 "shadow": shadow,
                                 "desk": desk, "rotate": round(rotate, 1), "digit_h": round(digit_h)}
    return _encoded(rng, rgb, labels, traits, ink)


# --- the thin-pen style -------------------------------------------------------------------------

@dataclass(frozen=True)
class _Frame:
    width: int
    height: int
    digit_h: float  # final pixels
    capture: str  # "scan": a tight low-resolution crop; "crop": part of a photo; "phone": a whole photo


_SCAN_CAMERA = _Camera(tilt=2.0, perspective=0.005, shake=0.0)
_PHONE_CAMERA = _Camera(tilt=7.0, perspective=0.04, shake=0.1)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _thin_frame(rng: np.random.Generator, n: int) -> _Frame:
    """Scans 30-80 px high with the digits filling them; photo crops 80-1000 px; phone photos
    1000-4000 px on the long side with the digits 5-90% of the frame's height."""
    capture = str(rng.choice(["scan", "crop", "phone"], p=[0.3, 0.2, 0.5]))
    if capture == "scan":
        height = _log_uniform(rng, 30, 80)
        digit_h = height * rng.uniform(0.6, 0.85)
        # A digit is 0.6-0.85 of its height wide; with the gap to the next, about 1.1 heights.
        width = digit_h * (rng.uniform(0.6, 0.85) + (n - 1) * rng.uniform(1.0, 1.3) + rng.uniform(0.15, 0.5))
        width = min(width, 80.0) if n == 1 else width
        return _Frame(round(width), round(height), digit_h, capture)
    aspect = float(rng.choice([4 / 3, 3 / 4, 16 / 9, 9 / 16, 1.0]))
    long_side = _log_uniform(rng, 1000, 4000) if capture == "phone" else _log_uniform(rng, 80, 1000)
    width = long_side if aspect >= 1 else long_side * aspect
    height = width / aspect
    digit_h = height * (_log_uniform(rng, 0.05, 0.9) if capture == "phone" else _log_uniform(rng, 0.2, 0.9))
    if n > 1:
        digit_h = min(digit_h, 0.86 * width / (n * 0.8))
    grow = max(1.0, 22 / digit_h)  # as in the classic style: at least ~22 px per digit
    return _Frame(round(width * grow), round(height * grow), digit_h * grow, capture)


def _render_thin(rng: np.random.Generator, digits: list[np.ndarray], labels: list[int], truth: bool) -> Photo:
    """Digits re-drawn along their centre line with a real pen's width (core.sim.pen_sim), on paper,
    sticky notes or cheques, from tight low-resolution scans to large phone photos."""
    n = len(digits)
    frame = _thin_frame(rng, n)
    scan = frame.capture == "scan"
    cw, ch, cdh = _working_size(frame.width, frame.height, frame.digit_h, 1600)
    paper, surface = pen_sim.surface(rng, ch, cw, cdh)
    pen = pen_sim.choose_pen(rng)
    min_width = 0.9 * cw / frame.width  # about one final pixel
    alphas = [pen_sim.draw_digit(rng, _ink_crop(d), max(6, round(cdh * rng.uniform(0.88, 1.12))), pen, min_width)
              for d in digits]
    gaps = [cdh * rng.uniform(0.08, 0.55) for _ in range(n - 1)]
    cut = scan and rng.random() < 0.3  # a tight crop: part of the writing is outside the frame
    shift = (rng.uniform(-0.12, 0.12), rng.uniform(-0.12, 0.12)) if cut else (0.0, 0.0)
    row = _place_row(rng, alphas, gaps, (cw, ch), cdh, fit=0.94 if scan else 0.86, shift=shift)
    ink = pen_sim.pen_texture(rng, row.ink, pen, row.digit_h)
    image = pen_sim.apply_ink(paper, ink, pen)
    desk = not scan and rng.random() < 0.15
    if desk:
        image = _desk(rng, image, row)
    shadow = False
    if not scan:
        # Light varies slowly: computed at most 800 px wide (wide shadow blurs are slow on large frames).
        small = min(1.0, 800 / max(cw, ch))
        light, shadow = _lighting(rng, max(8, round(ch * small)), max(8, round(cw * small)))
        light = cv2.resize(light, (cw, ch), interpolation=cv2.INTER_LINEAR)
        # Phones expose white paper as light grey and tint it with the light's colour.
        image *= light[..., None] * rng.uniform(0.75, 1.0) * (1 + rng.uniform(-0.06, 0.06, 3)).astype(np.float32)
    grey = scan and rng.random() < (0.85 if surface == "cheque" else 0.4)
    if grey:  # many scanners and cheque archives store grey levels
        image[:] = image @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]
    blur_scale = 0.6 if scan else max(1.0, max(cw, ch) / 1000)
    image, rotate, homography = _camera(rng, image, _SCAN_CAMERA if scan else _PHONE_CAMERA, blur_scale, cdh)
    rgb = _sensor(rng, image, frame.width, frame.height, fast=True)
    true_ink = _true_ink(ink, homography, frame.width, frame.height) if truth else None
    traits: dict[str, object] = {
        "size": (frame.width, frame.height), "capture": frame.capture, "paper": surface, "ink": pen.kind,
        "colour": pen.colour_name, "pen_width": round(pen.width, 3), "shadow": shadow, "desk": desk, "cut": cut,
        "grey": grey, "rotate": round(rotate, 1), "digit_h": round(frame.digit_h)}
    return _encoded(rng, rgb, labels, traits, true_ink)


STYLES = {"classic": _render_classic, "thin": _render_thin}


def render_photo(rng: np.random.Generator, digits: list[np.ndarray], labels: list[int],
                 style: str = "classic", *, truth: bool = False) -> Photo:
    """One synthetic phone photo of `digits` (MNIST 28x28 arrays) written left to right; `truth`
    adds the true ink map (Photo.ink; the photo itself is the same either way)."""
    if style not in STYLES:
        raise ValueError(f"unknown photo style {style!r} (known: {', '.join(STYLES)})")
    return STYLES[style](rng, digits, labels, truth)


def _encode_choice(rng: np.random.Generator) -> tuple[str, int]:
    fmt = "jpeg" if rng.random() < 0.85 else "png"
    exif = int(rng.choice(list(_EXIF_STORE))) if fmt == "jpeg" and rng.random() < 0.2 else 0
    return fmt, exif


def _encode(rgb: np.ndarray, fmt: str, exif: int, rng: np.random.Generator) -> bytes:
    if exif:
        turns, mirror = _EXIF_STORE[exif]
        rgb = np.ascontiguousarray(np.rot90(rgb[:, ::-1] if mirror else rgb, turns))
    image = Image.fromarray(rgb)
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, "PNG", compress_level=1)
    else:
        tags = Image.Exif()
        if exif:
            tags[0x0112] = exif
        image.save(buffer, "JPEG", quality=int(rng.integers(45, 96)), exif=tags)
    return buffer.getvalue()


def photo_set(images: np.ndarray, labels: np.ndarray, count: int, digits_per_photo: tuple[int, int],
              seed: int, style: str = "classic", *, truth: bool = False) -> list[Photo]:
    """`count` photos with a random number of digits in the inclusive range, drawn from MNIST;
    `style` is "classic" (upscaled MNIST strokes) or "thin" (re-drawn with real pen widths)."""
    rng = np.random.default_rng(seed)
    photos = []
    for _ in range(count):
        n = int(rng.integers(digits_per_photo[0], digits_per_photo[1] + 1))
        picks = rng.integers(0, len(images), n)
        photos.append(render_photo(rng, [images[i] for i in picks], [int(labels[i]) for i in picks], style,
                                   truth=truth))
    return photos


def contact_sheet(photos: list[Photo], tile: int = 256, columns: int = 6) -> np.ndarray:
    """The photos upright (EXIF applied), each fitted into a grey `tile` x `tile` square, as RGB."""
    from PIL import ImageOps

    rows = -(-len(photos) // columns)
    sheet = np.full((rows * tile, columns * tile, 3), 128, np.uint8)
    for i, photo in enumerate(photos):
        image = ImageOps.exif_transpose(Image.open(io.BytesIO(photo.data))).convert("RGB")
        scale = (tile - 4) / max(image.size)
        # Small scans are enlarged with visible pixels, as an image viewer shows them.
        resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)
        y, x = (i // columns) * tile + 2, (i % columns) * tile + 2
        sheet[y: y + image.height, x: x + image.width] = np.asarray(image)
    return sheet


def main() -> None:
    from core.model.data import load_mnist

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the photos here")
    parser.add_argument("--sheet", type=Path, help="write a contact sheet (PNG) of the photos here")
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--style", choices=list(STYLES), default="classic")
    args = parser.parse_args()
    if args.out is None and args.sheet is None:
        parser.error("give --out and/or --sheet")
    images, labels = load_mnist(train=False)
    photos = photo_set(images.numpy(), labels.numpy(), args.count, (1, 8), args.seed, args.style)
    for i, photo in enumerate(photos):
        print(i, photo.text, photo.traits)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            suffix = "png" if photo.traits["format"] == "png" else "jpg"
            (args.out / f"{i:03d}_{photo.text}.{suffix}").write_bytes(photo.data)
    if args.sheet is not None:
        args.sheet.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(contact_sheet(photos)).save(args.sheet)

if __name__ == "__main__":
    main()
