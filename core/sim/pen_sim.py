"""Pens and paper for core.sim.photo_sim: digits re-drawn along their centre line with a real pen's width,
and the surfaces people write on.

MNIST strokes, upscaled, are 10-15% of the digit's height wide; a ballpoint line is 1-3%. So the
digit is thinned to its centre line (Zhang-Suen) and drawn again with a pen: ballpoint (blue or
black, slight skips), gel (saturated), pencil (grey, grainy, uneven pressure, low contrast) or
marker (4-8% wide, dark or coloured), with the width varying a little along the stroke. Surfaces:
plain, tinted, ruled or squared paper, sticky notes, and cheque-like guilloche security patterns,
all with a mild paper texture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

SKELETON_HEIGHT = 96  # px: the digit is thinned at this height (MNIST's 20 px are too coarse)
MIN_DRAWN_WIDTH = 5.0  # px: the pen is drawn at least this wide, on a finer grid when needed
SMOOTHING = 3.0  # px at SKELETON_HEIGHT: MNIST's pixel-sized bumps are smoothed out of the centre line


def smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1] (a coarse random grid upsampled bicubically)."""
    coarse = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def rule_lines(rng: np.random.Generator, paper: np.ndarray, digit_h: float, style: str) -> np.ndarray:
    """Printed ruled or squared lines over `paper` (the random draws are the same for "plain")."""
    height, width = paper.shape[:2]
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
    if style == "plain":
        return paper
    alpha = (lines * strength)[..., None]
    return paper * (1 - alpha) + np.asarray(colour, np.float32) * alpha


# --- the centre line -------------------------------------------------------------------------------

def thin(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning: a boolean mask reduced to a one-pixel-wide centre line."""
    img = np.pad(mask, 1).astype(np.uint8)
    while True:
        removed = False
        for first in (True, False):
            # Neighbours clockwise from north: P2, P3, ..., P9 in Zhang and Suen's naming.
            p = [img[:-2, 1:-1], img[:-2, 2:], img[1:-1, 2:], img[2:, 2:],
                 img[2:, 1:-1], img[2:, :-2], img[1:-1, :-2], img[:-2, :-2]]
            count = sum(q.astype(np.int32) for q in p)
            transitions = sum((p[i] == 0) & (p[(i + 1) % 8] == 1) for i in range(8))
            a, b = (p[0] * p[2] * p[4], p[2] * p[4] * p[6]) if first else (p[0] * p[2] * p[6], p[0] * p[4] * p[6])
            kill = (img[1:-1, 1:-1] == 1) & (count >= 2) & (count <= 6) & (transitions == 1) & (a == 0) & (b == 0)
            if kill.any():
                img[1:-1, 1:-1][kill] = 0
                removed = True
        if not removed:
            return img[1:-1, 1:-1].astype(bool)


def prune(skeleton: np.ndarray, length: int) -> np.ndarray:
    """The centre line without the short spurs thinning leaves at corners: branches of fewer than
    `length` pixels from a loose end to a junction."""
    ones = skeleton.astype(np.float32)
    neighbours = cv2.filter2D(ones, -1, np.ones((3, 3), np.float32), borderType=cv2.BORDER_CONSTANT) - ones
    junctions = skeleton & (neighbours >= 3)
    near_junction = cv2.dilate(junctions.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    branches = skeleton & ~near_junction
    count, labelled, stats, _ = cv2.connectedComponentsWithStats(branches.astype(np.uint8), connectivity=8)
    ends = skeleton & (neighbours == 1)
    touching = cv2.dilate(near_junction.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    short = np.zeros(count, bool)
    short[1:] = stats[1:, cv2.CC_STAT_AREA] < length
    has_end = np.zeros(count, bool)
    has_end[np.unique(labelled[ends])] = True
    at_junction = np.zeros(count, bool)
    at_junction[np.unique(labelled[touching & branches])] = True
    spur = short & has_end & at_junction
    spur[0] = False
    return skeleton & ~spur[labelled]


def centre_line(crop: np.ndarray) -> np.ndarray:
    """Segments (K, 2, 2) of (x, y) along the centre line of a digit crop (ink in [0, 1]), scaled so
    that the line spans 0..1 vertically."""
    scale = SKELETON_HEIGHT / crop.shape[0]
    big = cv2.resize(crop, (max(2, round(crop.shape[1] * scale)), SKELETON_HEIGHT), interpolation=cv2.INTER_CUBIC)
    skeleton = prune(thin(big > 0.4), SKELETON_HEIGHT // 10)
    # The pixel staircase would show at large sizes: each point moves to the weighted mean of the
    # centre-line points around it.
    ones = skeleton.astype(np.float32)
    yy, xx = np.mgrid[0: ones.shape[0], 0: ones.shape[1]].astype(np.float32)
    weight = cv2.GaussianBlur(ones, (0, 0), SMOOTHING)
    mean_x = cv2.GaussianBlur(ones * xx, (0, 0), SMOOTHING) / np.maximum(weight, 1e-6)
    mean_y = cv2.GaussianBlur(ones * yy, (0, 0), SMOOTHING) / np.maximum(weight, 1e-6)
    ys, xs = np.nonzero(skeleton)
    pairs = [(ys, xs, ys, xs)]  # every point, so that a lone dot is drawn too
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        ny, nx = ys + dy, xs + dx
        inside = (ny < skeleton.shape[0]) & (nx >= 0) & (nx < skeleton.shape[1])
        linked = np.zeros_like(inside)
        linked[inside] = skeleton[ny[inside], nx[inside]]
        pairs.append((ys[linked], xs[linked], ny[linked], nx[linked]))
    y0, x0, y1, x1 = (np.concatenate(parts) for parts in zip(*pairs, strict=True))
    segments = np.stack([np.stack([mean_x[y0, x0], mean_y[y0, x0]], 1),
                         np.stack([mean_x[y1, x1], mean_y[y1, x1]], 1)], 1)
    top, bottom = segments[..., 1].min(), segments[..., 1].max()
    segments[..., 0] -= segments[..., 0].min()
    segments[..., 1] -= top
    return segments / max(float(bottom - top), 1.0)


# --- pens --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PenKind:
    share: float  # of all photos
    width: tuple[float, float]  # stroke width / digit height
    opacity: tuple[float, float]
    colours: dict[str, tuple[tuple[int, int, int], float]]  # name: (RGB, weight)


PEN_KINDS: dict[str, PenKind] = {
    "ballpoint": PenKind(0.4, (0.01, 0.025), (0.6, 0.95),
                         {"blue": ((30, 45, 150), 0.55), "black": ((30, 30, 35), 0.3), "red": ((185, 35, 45), 0.08),
                          "brown": ((105, 65, 40), 0.07)}),
    "gel": PenKind(0.2, (0.015, 0.03), (0.9, 1.0),
                   {"blue": ((20, 50, 200), 0.35), "black": ((20, 20, 25), 0.3), "purple": ((100, 30, 160), 0.1),
                    "green": ((20, 130, 60), 0.1), "red": ((210, 20, 50), 0.08), "brown": ((110, 60, 30), 0.07)}),
    "pencil": PenKind(0.2, (0.012, 0.03), (0.45, 0.8), {"graphite": ((60, 60, 68), 1.0)}),
    "marker": PenKind(0.2, (0.04, 0.08), (0.85, 1.0),
                      {"black": ((25, 25, 28), 0.4), "blue": ((20, 40, 150), 0.2), "red": ((190, 25, 35), 0.12),
                       "green": ((20, 110, 50), 0.12), "purple": ((80, 30, 120), 0.08), "brown": ((90, 55, 30), 0.08)}),
}


@dataclass(frozen=True)
class Pen:
    kind: str
    colour_name: str
    colour: np.ndarray  # RGB, 0-255
    width: float  # stroke width / digit height
    opacity: float
    wobble: float  # relative width variation along the stroke


def choose_pen(rng: np.random.Generator, kind: str | None = None) -> Pen:
    names = list(PEN_KINDS)
    if kind is None:
        kind = str(rng.choice(names, p=[PEN_KINDS[k].share for k in names]))
    spec = PEN_KINDS[kind]
    colours = list(spec.colours)
    weights = np.array([spec.colours[c][1] for c in colours])
    colour_name = str(rng.choice(colours, p=weights / weights.sum()))
    colour = np.clip(np.asarray(spec.colours[colour_name][0], np.float32) + rng.uniform(-12, 12, 3), 0, 255)
    return Pen(kind, colour_name, colour.astype(np.float32), float(rng.uniform(*spec.width)),
               float(rng.uniform(*spec.opacity)), float(rng.uniform(0.1, 0.3)))


def draw_digit(rng: np.random.Generator, crop: np.ndarray, height: int, pen: Pen, min_width: float = 0.0) -> np.ndarray:
    """The digit's centre line drawn with `pen` as an ink alpha map about `height` pixels tall, the
    stroke at least `min_width` px wide (a camera images no line much narrower than a pixel)."""
    segments = centre_line(crop)
    stretch, slant = rng.uniform(0.85, 1.15), rng.uniform(-0.2, 0.2)
    segments[..., 0] = segments[..., 0] * stretch + slant * (1 - segments[..., 1])
    segments[..., 0] -= segments[..., 0].min()
    width = max(pen.width * height * rng.uniform(0.85, 1.15), min_width)
    fine = int(np.clip(math.ceil(MIN_DRAWN_WIDTH / width), 1, 8))  # supersampling factor
    margin = width * fine + 2
    points = segments * max(1.0, (height - width) * fine) + margin
    size_x = math.ceil(points[..., 0].max() + margin)
    size_y = math.ceil(points[..., 1].max() + margin)
    line: np.ndarray = np.full((size_y, size_x), 255, np.uint8)
    shift = 3  # subpixel bits for cv2.polylines
    polylines = list(np.round(points * (1 << shift)).astype(np.int32)[:, :, None, :])
    cv2.polylines(line, polylines, False, 0, 1, cv2.LINE_8, shift)
    distance = cv2.distanceTransform(line, cv2.DIST_L2, 5)
    radius = 0.5 * width * fine * (1 + pen.wobble * smooth_noise(rng, size_y, size_x, 6))
    alpha = np.clip(radius - distance + 0.5, 0, 1)
    out = (max(2, round(size_x / fine)), max(2, round(size_y / fine)))
    return cv2.resize(alpha, out, interpolation=cv2.INTER_AREA) if fine > 1 else alpha


def pen_texture(rng: np.random.Generator, ink: np.ndarray, pen: Pen, digit_h: float) -> np.ndarray:
    """What the pen leaves on paper: ballpoint skips, pencil grain and pressure, a gel's evenness."""
    height, width = ink.shape
    # Noise grids in cells of about a tenth of the digit (skips) or a third (pressure).
    fine_cells = int(np.clip(max(height, width) / max(digit_h * 0.1, 1), 4, 400))
    coarse_cells = int(np.clip(max(height, width) / max(digit_h * 0.35, 1), 3, 120))
    if pen.kind == "ballpoint":
        skips = smooth_noise(rng, height, width, fine_cells)
        depth = rng.uniform(0.3, 0.8)
        ink = ink * (1 - depth * np.clip((skips - rng.uniform(0.45, 0.8)) / 0.15, 0, 1))
    elif pen.kind == "pencil":
        pressure = 0.5 + 0.5 * smooth_noise(rng, height, width, coarse_cells)
        grain = rng.standard_normal((height, width), np.float32)
        grain = cv2.GaussianBlur(grain, (0, 0), 0.6) * 2.5
        ink = ink * (1 - rng.uniform(0.15, 0.45) * pressure) * np.clip(1 + rng.uniform(0.3, 0.6) * grain, 0, 1.2)
    return ink * pen.opacity


def apply_ink(paper: np.ndarray, ink: np.ndarray, pen: Pen) -> np.ndarray:
    """Dyes (ballpoint, gel, marker) filter the paper's colour; graphite covers it."""
    alpha = ink[..., None]
    if pen.kind == "pencil":
        return paper * (1 - alpha) + pen.colour * alpha
    return paper * (1 - alpha * (1 - pen.colour / 255))


# --- surfaces ---------------------------------------------------------------------------------------

SURFACES: dict[str, tuple[float, list[list[int]]]] = {  # name: (share, paper colours)
    "plain": (0.22, [[250, 250, 248], [245, 240, 228], [232, 232, 226]]),
    "ruled": (0.14, [[250, 250, 248], [245, 242, 230]]),
    "squared": (0.12, [[250, 250, 248], [245, 242, 230]]),
    "sticky": (0.2, [[252, 238, 125], [205, 240, 160], [250, 185, 205], [175, 215, 245], [255, 215, 150]]),
    "tinted": (0.14, [[248, 215, 222], [215, 230, 245], [222, 240, 215], [238, 222, 192], [218, 218, 218]]),
    "cheque": (0.18, [[225, 236, 226], [222, 228, 240], [240, 234, 218], [232, 232, 232]]),
}


def surface(rng: np.random.Generator, height: int, width: int, digit_h: float,
            kind: str | None = None) -> tuple[np.ndarray, str]:
    """A sheet to write on, filling `height` x `width`, and its kind."""
    names = list(SURFACES)
    if kind is None:
        kind = str(rng.choice(names, p=[SURFACES[k][0] for k in names]))
    colours = SURFACES[kind][1]
    base = np.asarray(colours[rng.integers(len(colours))], np.float32) + rng.uniform(-8, 5, 3)
    paper = np.empty((height, width, 3), np.float32)
    paper[:] = base
    # Mild texture: large blotches, fibres a few pixels across, and grain.
    paper += smooth_noise(rng, height, width, 6)[..., None] * rng.uniform(0, 8)
    fibre_cells = int(np.clip(max(height, width) / 6, 4, 300))
    paper += smooth_noise(rng, height, width, fibre_cells)[..., None] * rng.uniform(0, 4)
    paper += rng.standard_normal((height, width, 1), np.float32) * rng.uniform(0.5, 2.5)
    if kind in ("ruled", "squared"):
        paper = rule_lines(rng, paper, digit_h, kind)
    elif kind == "cheque":
        paper = guilloche(rng, paper, base, digit_h)
    return paper, kind


def guilloche(rng: np.random.Generator, paper: np.ndarray, base: np.ndarray, digit_h: float) -> np.ndarray:
    """A cheque's security print: one or two families of fine, wavy, nearly horizontal lines."""
    height, width = paper.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    period = max(2.2, digit_h * rng.uniform(0.04, 0.09))
    pattern: np.ndarray = np.zeros((height, width), np.float32)
    for family in range(int(rng.integers(1, 3))):
        wave = rng.uniform(6, 25) * period
        y = (yy + rng.uniform(-0.1, 0.1) * xx
             + rng.uniform(0.2, 1.2) * period * np.sin(2 * math.pi * xx / wave + rng.uniform(0, 2 * math.pi)))
        lines = (0.5 + 0.5 * np.cos(2 * math.pi * y / period)) ** rng.uniform(3, 10)
        pattern = np.maximum(pattern, lines * (1.0 if family == 0 else rng.uniform(0.4, 0.8)))
    colour = base * rng.uniform(0.5, 0.8)
    alpha = (pattern * rng.uniform(0.2, 0.55))[..., None]
    return paper * (1 - alpha) + colour * alpha
