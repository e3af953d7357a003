"""Synthetic phone photos of handwritten digits: for benchmarks, tests and the base recipe's photo stage.

MNIST digits (the benchmarks draw the *test* set, training the *training* set) are drawn as ink
onto simulated paper photographed with a phone: paper tint
and texture, plain/ruled/squared paper, the paper edge and the desk, blue/black/red ink or
pencil, chalk-like light ink on dark boards, light gradients, vignetting and soft shadows, small
rotation and perspective, blur, sensor noise, JPEG artefacts, EXIF orientation, and final sizes
from 100 px to 4000 px. Rows of several digits get uneven spacing, baseline and size.

    python -m core.photo_sim --out /tmp/photos --count 24   # writes a few samples to look at
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

# EXIF orientation tag value -> the rotation (np.rot90 k, and whether to mirror) that turns the
# upright image into the stored pixels, so that a viewer applying the tag shows it upright.
_EXIF_STORE = {3: (2, False), 6: (1, False), 8: (3, False), 2: (0, True)}


@dataclass
class Photo:
    data: bytes
    labels: list[int]
    traits: dict[str, object] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "".join(str(d) for d in self.labels)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1] (a coarse random grid upsampled bicubically)."""
    coarse = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def _digit_alpha(rng: np.random.Generator, digit: np.ndarray, height: int) -> np.ndarray:
    """An MNIST digit (white on black) as an ink alpha map about `height` pixels tall."""
    ys, xs = np.nonzero(digit > 30)
    crop = digit[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1].astype(np.float32) / 255
    crop = np.pad(crop, 2)
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
    paper += _smooth_noise(rng, height, width, 6)[..., None] * rng.uniform(0, 10)
    paper += rng.normal(0, rng.uniform(0.5, 3), (height, width, 1)).astype(np.float32)
    if dark:
        return paper, "board"
    style = rng.choice(["plain", "ruled", "squared"], p=[0.4, 0.35, 0.25])
    colour = rng.choice([[150, 180, 225], [160, 160, 165], [120, 170, 210], [200, 150, 150]])
    strength = rng.uniform(0.35, 0.9)
    # Digits sit between ruled lines, or span one or a few squares; printed lines are much thinner
    # than pen strokes (about 0.2 mm against 0.5-1 mm).
    spacing = digit_h * rng.uniform(1.1, 1.8) if style == "ruled" else digit_h / rng.uniform(1.2, 3.5)
    thickness = max(1, round(spacing * rng.uniform(0.015, 0.04)))
    offset = rng.uniform(0, spacing)
    lines = np.zeros((height, width), np.float32)
    for y in np.arange(offset, height, spacing):
        cv2.line(lines, (0, round(y)), (width, round(y)), 1.0, thickness, cv2.LINE_AA)
    if style == "squared":
        for x in np.arange(rng.uniform(0, spacing), width, spacing):
            cv2.line(lines, (round(x), 0), (round(x), height), 1.0, thickness, cv2.LINE_AA)
    if style == "ruled" and rng.random() < 0.4:  # red margin line
        x = round(width * rng.uniform(0.05, 0.2))
        cv2.line(lines, (x, 0), (x, height), 1.0, thickness + 1, cv2.LINE_AA)
    if style != "plain":
        alpha = (lines * strength)[..., None]
        paper = paper * (1 - alpha) + np.asarray(colour, np.float32) * alpha
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


def render_photo(rng: np.random.Generator, digits: list[np.ndarray], labels: list[int]) -> Photo:
    """One synthetic phone photo of `digits` (MNIST 28x28 arrays) written left to right."""
    n = len(digits)
    width, height, digit_h = _layout_size(rng, n)
    # Compose at a working scale (at most ~1000 px) and resize to the final size at the end.
    scale = min(1.0, 1000 / max(width, height))
    cw, ch, cdh = max(8, round(width * scale)), max(8, round(height * scale)), digit_h * scale
    dark = rng.random() < 0.15
    paper, paper_style = _paper(rng, ch, cw, cdh, dark)
    ink = np.zeros((ch, cw), np.float32)
    alphas = [_digit_alpha(rng, d, max(6, round(cdh * rng.uniform(0.88, 1.12)))) for d in digits]
    gaps = [cdh * rng.uniform(0.08, 0.55) for _ in range(n - 1)]
    row_w = sum(a.shape[1] for a in alphas) + sum(gaps)
    if row_w > 0.86 * cw:  # keep the whole row inside the frame, also after rotation
        shrink = 0.86 * cw / row_w
        alphas = [cv2.resize(a, (max(2, round(a.shape[1] * shrink)), max(2, round(a.shape[0] * shrink))))
                  for a in alphas]
        gaps = [g * shrink for g in gaps]
        cdh *= shrink
        row_w = sum(a.shape[1] for a in alphas) + sum(gaps)
    x = (cw - row_w) / 2 + rng.uniform(-0.3, 0.3) * max(0.0, 0.9 * cw - row_w)
    cy = ch / 2 + rng.uniform(-0.25, 0.25) * max(0.0, 0.9 * ch - 1.3 * cdh)
    x_start = x
    for i, alpha in enumerate(alphas):
        y = cy - alpha.shape[0] / 2 + rng.uniform(-0.08, 0.08) * cdh
        x0, y0 = round(x), round(y)
        ys = slice(max(0, y0), min(ch, y0 + alpha.shape[0]))
        xs = slice(max(0, x0), min(cw, x0 + alpha.shape[1]))
        part = alpha[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0]
        ink[ys, xs] = np.maximum(ink[ys, xs], part)
        x += alpha.shape[1] + (gaps[i] if i < n - 1 else 0)
    colour, ink_kind = _ink_colour(rng, dark)
    opacity = rng.uniform(0.75, 1.0) if ink_kind != "pencil" else rng.uniform(0.6, 0.85)
    a = (ink * opacity)[..., None]
    image = paper * (1 - a) + colour.astype(np.float32) * a

    desk = not dark and rng.random() < 0.2
    if desk:  # the paper does not fill the frame: a darker desk shows at one or two edges
        desk_colour = rng.choice([[90, 70, 50], [60, 60, 65], [150, 120, 90], [30, 30, 30]])
        margin: np.ndarray = np.zeros((ch, cw), np.float32)
        side = rng.integers(4)
        # The paper edge stays clear of the writing: at most the free space between row and border.
        row_x0, row_x1 = x_start, x
        row_y0, row_y1 = cy - 0.7 * cdh, cy + 0.7 * cdh
        free = [row_x0, cw - row_x1, row_y0, ch - row_y1][side]
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
        image = image * (1 - margin) + np.asarray(desk_colour, np.float32) * margin

    light, shadow = _lighting(rng, ch, cw)
    image *= light[..., None]

    # Small rotation and perspective: move the four corners, keep the paper filling the frame.
    rotate = rng.uniform(-7, 7)
    centre = (cw / 2, ch / 2)
    matrix = cv2.getRotationMatrix2D(centre, rotate, 1.0)
    src = np.array([[0, 0], [cw, 0], [cw, ch], [0, ch]], np.float32)
    dst = src + rng.uniform(-0.05, 0.05, (4, 2)).astype(np.float32) * [cw, ch]
    dst = cv2.transform(dst[None], matrix)[0].astype(np.float32)
    homography = cv2.getPerspectiveTransform(src, dst)
    image = cv2.warpPerspective(image, homography, (cw, ch), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REFLECT)

    blur = rng.uniform(0, 1.4) * max(1.0, cdh / 60)
    if blur > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), blur)
    if rng.random() < 0.15:  # hand shake
        length = max(2, round(cdh * rng.uniform(0.02, 0.08)))
        kernel: np.ndarray = np.zeros((length, length), np.float32)
        kernel[length // 2] = 1 / length
        rot = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), rng.uniform(0, 180), 1)
        kernel = cv2.warpAffine(kernel, rot, (length, length))
        image = cv2.filter2D(image, -1, kernel / max(kernel.sum(), 1e-6))

    interpolation = cv2.INTER_AREA if width < cw else cv2.INTER_LINEAR
    image = cv2.resize(image, (width, height), interpolation=interpolation)
    noise = rng.uniform(1, 7)
    image += rng.normal(0, noise, (height, width, 1)).astype(np.float32)
    rgb = np.clip(image, 0, 255).astype(np.uint8)

    traits: dict[str, object] = {"size": (width, height), "dark": dark, "paper": paper_style, "ink": ink_kind,
                                 "shadow": shadow,
                                 "desk": desk, "rotate": round(rotate, 1), "digit_h": round(digit_h)}
    fmt, exif = _encode_choice(rng)
    traits["format"], traits["exif"] = fmt, exif
    return Photo(_encode(rgb, fmt, exif, rng), list(labels), traits)


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
              seed: int) -> list[Photo]:
    """`count` photos with a random number of digits in the inclusive range, drawn from MNIST."""
    rng = np.random.default_rng(seed)
    photos = []
    for _ in range(count):
        n = int(rng.integers(digits_per_photo[0], digits_per_photo[1] + 1))
        picks = rng.integers(0, len(images), n)
        photos.append(render_photo(rng, [images[i] for i in picks], [int(labels[i]) for i in picks]))
    return photos


def main() -> None:
    from core.data import load_mnist

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    images, labels = load_mnist(train=False)
    args.out.mkdir(parents=True, exist_ok=True)
    photos = photo_set(images.numpy(), labels.numpy(), args.count, (1, 8), args.seed)
    for i, photo in enumerate(photos):
        suffix = "png" if photo.traits["format"] == "png" else "jpg"
        (args.out / f"{i:03d}_{photo.text}.{suffix}").write_bytes(photo.data)
        print(i, photo.text, photo.traits)


if __name__ == "__main__":
    main()
