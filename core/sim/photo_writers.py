"""Simulated writers the base model misreads, as thin-pen phone photos (issue 12).

core.sim.crop_writers's writers are ready 28x28 crops; these are *photos*: each labelled digit is
written with one of the writer's own glyphs, then photographed by core.sim.photo_sim's thin-pen style
(core.sim.pen_sim: ballpoint, gel, pencil or marker re-drawn along the digit's centre line, on paper,
sticky notes or cheques, as tight scans, photo crops or 1000-4000 px phone photos). The bot reads
them through the whole pipeline (core.vision.preprocess + core.recognize), so a miss is either
*segmentation* (no digit, or the wrong number of digits found) or *classification* (the right
number of digits, a wrong digit).

Two kinds of writer:

* Semeion writers: the digits of one Semeion collection round (another population and scanner than
  MNIST), rendered as crops by core.sim.crop_writers.render_semeion, then photographed.
* Glyph writers: MNIST train[50000:] digits (disjoint from the test set and the replay bank) with
  the writer's slant, rotation and width (core.sim.crop_writers.Style, no crop-level photo look), and
  for some digits the writer's own glyph drawn from strokes instead: a flagged 1 with a foot, an
  open 4, a crossed 7, a looped 2, a hooked 9, a slashed 0, a flat-topped 3 ... Each sample
  jitters the strokes and the geometry a little.

Writers are split into ``dev`` (for tuning) and ``eval`` (only for reporting; fixed before any run).
Every photo is rendered from its own seed (writer, index) from the writer's index-th digit. A
Semeion writer's first digits do not depend on ``n``; a glyph writer's do (its MNIST digits are drawn
``n`` at a time), so a run is reproduced with the same ``n``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

from core.model.data import load_mnist, load_semeion
from core.sim.crop_writers import USER_POOL_START, Style, apply_style, fit_to_mnist_box, render_semeion
from core.sim.photo_sim import Photo, render_photo

if TYPE_CHECKING:
    from core.recognize import PhotoReading

RIGHT, SEGMENTATION, CLASSIFICATION = "right", "segmentation", "classification"
PHOTO_STYLE = "thin"  # core.sim.photo_sim style

Stroke = list[tuple[float, float]]  # (x, y) in a unit box, y downwards


# --- glyphs: a writer's own way of drawing a digit, as strokes in a unit box -----------------------

def _arc(cx: float, cy: float, rx: float, ry: float, start_deg: float, end_deg: float, n: int = 14) -> Stroke:
    angles = np.deg2rad(np.linspace(start_deg, end_deg, n))
    return [(cx + rx * float(np.cos(a)), cy + ry * float(np.sin(a))) for a in angles]


GLYPHS: dict[str, Callable[[], list[Stroke]]] = {
    # "1" with a long flag and a foot (continental)
    "flag1": lambda: [[(0.15, 0.3), (0.6, 0.0), (0.6, 1.0)], [(0.25, 1.0), (0.95, 1.0)]],
    # "1" with a flag only, no foot
    "flag1-nofoot": lambda: [[(0.2, 0.35), (0.65, 0.0), (0.6, 1.0)]],
    # open "4": a "u"-like first stroke whose top never closes, then the long vertical
    "open4": lambda: [[(0.15, 0.0), (0.08, 0.62), (0.95, 0.62)], [(0.72, 0.05), (0.72, 1.0)]],
    # open "4" with a slanted first stroke and a short stem
    "open4-slant": lambda: [[(0.3, 0.0), (0.05, 0.55), (0.9, 0.55)], [(0.68, 0.2), (0.62, 1.0)]],
    # "7" crossed in the middle
    "cross7": lambda: [[(0.05, 0.05), (0.95, 0.05), (0.45, 1.0)], [(0.35, 0.52), (0.9, 0.5)]],
    # "7" with a hooked top-left start and a cross
    "hook-cross7": lambda: [[(0.05, 0.2), (0.1, 0.02), (0.95, 0.05), (0.35, 1.0)], [(0.25, 0.55), (0.85, 0.52)]],
    # "2" with a loop at the bottom left before the base line
    "loop2": lambda: [[*_arc(0.5, 0.28, 0.38, 0.26, 200, 360), (0.75, 0.5), (0.2, 0.88), (0.12, 1.0),
                       (0.3, 1.0), (0.32, 0.85), (0.22, 0.86), (0.45, 0.98), (0.95, 0.95)]],
    # "9" whose stem ends in a hook to the left
    "hook9": lambda: [_arc(0.5, 0.28, 0.32, 0.27, 0, 360, 20),
                      [(0.82, 0.28), (0.8, 0.75), (0.7, 0.95), (0.45, 1.0), (0.22, 0.88)]],
    # "9" as a loop and a straight stem far to the right, the loop left open
    "open9": lambda: [_arc(0.45, 0.28, 0.32, 0.26, 20, 340, 18), [(0.78, 0.2), (0.78, 1.0)]],
    # "0" with a slash through it
    "slash0": lambda: [_arc(0.5, 0.5, 0.36, 0.5, 0, 360, 24), [(0.95, 0.0), (0.05, 1.0)]],
    # "3" with a flat top (like a "z" with a round belly)
    "flat3": lambda: [[(0.1, 0.02), (0.85, 0.02), (0.4, 0.42), *_arc(0.45, 0.7, 0.42, 0.3, -80, 150)]],
    # "8" drawn as two separate stacked circles
    "circles8": lambda: [_arc(0.5, 0.24, 0.28, 0.24, 0, 360, 18), _arc(0.5, 0.74, 0.36, 0.26, 0, 360, 20)],
    # "5" whose top bar floats free of the body
    "float5": lambda: [[(0.3, 0.05), (0.95, 0.0)],
                       [(0.25, 0.12), (0.18, 0.45), *_arc(0.48, 0.7, 0.42, 0.3, -110, 150)]],
    # "6" with a tiny loop at the bottom of a long, straight stroke
    "small6": lambda: [[(0.75, 0.0), (0.35, 0.55), *_arc(0.55, 0.8, 0.27, 0.2, 180, 540, 18)]],
}


def _chaikin(points: np.ndarray, rounds: int = 2) -> np.ndarray:
    """Corner cutting: a hand's smooth curve through a polyline's corners (ends kept)."""
    for _ in range(rounds):
        if len(points) < 3:
            return points
        q = 0.75 * points[:-1] + 0.25 * points[1:]
        r = 0.25 * points[:-1] + 0.75 * points[1:]
        points = np.vstack([points[:1], np.stack([q, r], 1).reshape(-1, 2), points[-1:]])
    return points


def draw_glyph(name: str, rng: np.random.Generator, size: int = 84, jitter: float = 0.03) -> np.ndarray:
    """One jittered copy of glyph ``name`` as an MNIST-style 28x28 crop (white on black)."""
    strokes = GLYPHS[name]()
    canvas: np.ndarray = np.zeros((size, size), np.uint8)
    margin = size * 0.15
    span = size - 2 * margin
    for stroke in strokes:
        points = np.asarray(stroke, np.float64)
        points = points + rng.normal(0, jitter, points.shape)
        points = _chaikin(points) * span + margin
        cv2.polylines(canvas, [np.round(points * 8).astype(np.int32)], False, 255,
                      max(2, round(size * 0.09)), cv2.LINE_AA, 3)
    return fit_to_mnist_box(canvas)


# --- writers ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GlyphStyle:
    """A writer's slant and width (``geometry``; its glyph flags and photo look are not used) and
    the digits they always draw their own way (digit -> GLYPHS name)."""

    geometry: Style = field(default_factory=Style)
    glyphs: tuple[tuple[int, str], ...] = ()


DEV_GLYPH_STYLES = {
    "dev-photo-continental": GlyphStyle(Style(shear=0.35, rotate_deg=-4),
                                        ((1, "flag1"), (4, "open4"), (7, "cross7"), (0, "slash0"))),
    "dev-photo-loops": GlyphStyle(Style(shear=-0.3, width=1.2),
                                  ((2, "loop2"), (9, "hook9"), (3, "flat3"), (5, "float5"))),
}
# Fixed before any benchmark run on them; never used for tuning.
EVAL_GLYPH_STYLES = {
    "eval-photo-euro": GlyphStyle(Style(shear=0.5, rotate_deg=6),
                                  ((1, "flag1-nofoot"), (4, "open4-slant"), (7, "hook-cross7"), (9, "open9"))),
    "eval-photo-round": GlyphStyle(Style(shear=-0.2, width=0.75),
                                   ((2, "loop2"), (0, "slash0"), (8, "circles8"), (6, "small6"))),
}
SEMEION_PHOTO_ROUNDS = {"dev": (0, 1), "eval": (3, 4)}


@dataclass
class PhotoWriter:
    name: str
    crops: np.ndarray  # uint8 (N,28,28): what the writer wrote, before the photo (in labelling order)
    labels: np.ndarray  # int64 (N,)
    seed: int = 0
    _photos: dict[int, Photo] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def photo(self, index: int) -> Photo:
        """The index-th labelled digit as a thin-pen photo (rendered once, from its own seed)."""
        if index not in self._photos:
            rng = np.random.default_rng([self.seed, *self.name.encode(), index])
            self._photos[index] = render_photo(rng, [self.crops[index]], [int(self.labels[index])], PHOTO_STYLE)
        return self._photos[index]

    def photos(self, indices: Sequence[int] | range) -> list[Photo]:
        return [self.photo(i) for i in indices]


def styled_digit(image: np.ndarray, label: int, style: GlyphStyle, rng: np.random.Generator) -> np.ndarray:
    """One digit as this writer writes it: their glyph for ``label`` if they have one, else ``image``
    (an MNIST digit), with their geometry; MNIST-style 28x28, no photo look (the photo adds it)."""
    glyphs = dict(style.glyphs)
    source = draw_glyph(glyphs[label], rng) if label in glyphs else image
    geometry = Style(shear=style.geometry.shear, rotate_deg=style.geometry.rotate_deg,
                     width=style.geometry.width, thickness=style.geometry.thickness)
    return apply_style(source, label, geometry, rng)


def glyph_writer(name: str, style: GlyphStyle, n: int = 200, seed: int = 0) -> PhotoWriter:
    images, labels = load_mnist(train=True)
    rng = np.random.default_rng([seed, *name.encode()])
    chosen = rng.choice(np.arange(USER_POOL_START, len(images)), size=n, replace=False)
    source = images[chosen].numpy()
    targets = labels[chosen].numpy().astype(np.int64)
    crops = np.stack([styled_digit(img, int(lab), style, rng) for img, lab in zip(source, targets, strict=True)])
    return PhotoWriter(name, crops, targets, seed)


def semeion_writer(round_index: int, n: int = 200, seed: int = 0) -> PhotoWriter:
    images, labels, rounds = load_semeion()
    member = np.flatnonzero(rounds == round_index)
    order = np.random.default_rng(seed + round_index).permutation(member)[:n]
    return PhotoWriter(f"semeion-photo-round{round_index}", render_semeion(images[order]),
                       labels[order].astype(np.int64), seed)


def photo_writers(split: str = "dev", n: int = 200, seed: int = 0) -> list[PhotoWriter]:
    """The ``split`` ("dev" or "eval") photo writers: glyph writers, then Semeion rounds (a Semeion
    round has 199 or more digits, so n above that gives fewer)."""
    styles = DEV_GLYPH_STYLES if split == "dev" else EVAL_GLYPH_STYLES
    return ([glyph_writer(name, style, n, seed) for name, style in styles.items()]
            + [semeion_writer(r, n, seed) for r in SEMEION_PHOTO_ROUNDS[split]])


# --- what the pipeline made of a photo ----------------------------------------------------------

def miss_kind(reading: PhotoReading, labels: Sequence[int]) -> str:
    """RIGHT, SEGMENTATION (no digit, or another number of digits than written) or CLASSIFICATION
    (as many digits as written, at least one of them wrong)."""
    if reading.status != "ok" or len(reading.predictions) != len(labels):
        return SEGMENTATION
    return RIGHT if [p.digit for p in reading.predictions] == list(labels) else CLASSIFICATION


def labelled_crops(readings: Sequence[PhotoReading], labels: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """The crops a user labels by correcting these readings: each photo whose reading found as many
    digits as written gives its crops with the true digits; the others (segmentation misses) give none."""
    crops: list[np.ndarray] = []
    targets: list[int] = []
    for reading, written in zip(readings, labels, strict=True):
        if reading.status == "ok" and len(reading.crops) == len(written):
            crops.extend(crop.image for crop in reading.crops)
            targets.extend(int(d) for d in written)
    stacked = np.stack(crops).astype(np.uint8) if crops else np.zeros((0, 28, 28), np.uint8)
    return stacked, np.array(targets, dtype=np.int64)
