"""Finding the digits of one row in a grey photo: soft ink map, ink mask, digit regions.

1. Polarity: ink is the sparse part of the image, so compare how far pixels fall below and rise
   above a large median; light ink on a dark board is inverted to dark ink on light.
2. Paper: a morphological closing a few pen widths wide (the pen width comes from a quick pass at
   low resolution) erases the ink and keeps the paper, its tint, light gradients and shadow
   edges; the light missing relative to it is a soft ink map (uint8, 0..255) that does not care
   about the lighting (shadows scale paper and ink alike).
3. Mask: hysteresis on the ink map relative to the darkest ink and to the paper's noise, so faint
   paper lines and shadow edges only survive right next to real strokes; structures thinner
   than the pen (printed paper lines) are opened away.
4. Regions: see core.vision.grouping (pieces merged, specks/blobs/shadow tips dropped, touching digits
   split, the row followed from its largest digits).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from core.vision.faint_digits import faint_digits, join_broken_rings
from core.vision.grouping import (
    MIN_DIGIT_HEIGHT,
    Group,
    best_row,
    components,
    digit_like,
    drop_shadow_tips,
    is_blob,
    label_stats,
    merge_pieces,
    own_mask,
    quantile,
    split_touching,
    stroke_width,
)
from core.vision.paper_lines import line_fragment, long_labels, separate_lines

BG_LONG_SIDE = 128
MIN_INK_CONTRAST = 0.15
ESTIMATE_LONG_SIDE = 256


@dataclass
class DigitRegion:
    box: tuple[int, int, int, int]  # x, y, w, h
    mask: np.ndarray  # (h, w) uint8 0/1: the pixels that belong to this digit (slightly dilated)
    stroke_width: float  # estimated pen width in pixels


@dataclass
class Segmentation:
    ink: np.ndarray  # uint8 0..255, ink high, same size as the grey image
    mask: np.ndarray  # uint8 0/255: the ink kept as digits
    regions: list[DigitRegion]  # left to right
    inverted: bool


def _odd(value: float, minimum: int = 3) -> int:
    size = max(minimum, round(value))
    return size if size % 2 else size + 1


def shrunk(gray: np.ndarray, long_side: float) -> np.ndarray:
    """`gray` brought down (INTER_AREA) to at most `long_side` pixels on its long side."""
    height, width = gray.shape
    scale = min(1.0, long_side / max(height, width))
    if scale >= 1:
        return gray
    return cv2.resize(gray, (max(1, round(width * scale)), max(1, round(height * scale))),
                      interpolation=cv2.INTER_AREA)


def polarity_inverted(gray: np.ndarray) -> bool:
    """Whether the photo is light ink on a dark background.

    Ink is the sparse part of the picture: compare how far pixels fall below and rise above a
    large median (the median ignores the ink and keeps the edges of the desk and of shadows).
    """
    small = shrunk(gray, BG_LONG_SIDE)
    noise = np.full(small.shape, 12, np.uint8)

    def darker_lighter(median: np.ndarray) -> tuple[int, int]:
        return (int(cv2.subtract(cv2.subtract(median, small), noise).sum()),
                int(cv2.subtract(cv2.subtract(small, median), noise).sum()))

    # First with the median taken at a quarter of the resolution (a large median filter costs
    # more than the rest of the test); the full one only when that answer is not clear-cut.
    quarter = cv2.resize(small, (max(1, small.shape[1] // 4), max(1, small.shape[0] // 4)),
                         interpolation=cv2.INTER_AREA)
    darker, lighter = darker_lighter(cv2.resize(cv2.medianBlur(quarter, _odd(max(quarter.shape) * 0.25, 3)),
                                                small.shape[::-1], interpolation=cv2.INTER_LINEAR))
    if max(darker, lighter) <= 3 * min(darker, lighter) + 1000:
        darker, lighter = darker_lighter(cv2.medianBlur(small, _odd(max(small.shape) * 0.25, 5)))
    return lighter > darker


def ink_map(gray: np.ndarray, kernel: int) -> np.ndarray:
    """Soft ink map (uint8, ink high) of dark ink on light paper.

    The paper is a morphological closing with a square of `kernel` pixels (it must be wider than
    the pen stroke), computed at a reduced scale where it stays at least 7 px wide.
    """
    height, width = gray.shape
    scale = min(1.0, max(7 / kernel, BG_LONG_SIDE / max(height, width)))
    small = gray
    if scale < 1:
        small = cv2.resize(gray, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
    kernel_small = cv2.getStructuringElement(cv2.MORPH_RECT, (_odd(kernel * scale),) * 2)
    background = cv2.blur(cv2.morphologyEx(small, cv2.MORPH_CLOSE, kernel_small), (3, 3))
    # Ink is the light missing relative to the local paper; the denominator has a floor so that
    # sensor noise on a very dark desk or in a deep shadow is not blown up into "ink".
    floor = max(1, int(0.35 * quantile(background, 0.9)))
    if background.shape != gray.shape:
        background = cv2.resize(background, (width, height), interpolation=cv2.INTER_LINEAR)
    missing = cv2.subtract(background, cv2.GaussianBlur(gray, (3, 3), 0))
    return cv2.divide(missing, np.maximum(background, floor).astype(np.uint8), scale=255)


def _frame_edges(strong: np.ndarray) -> np.ndarray | None:
    """Pixels of long strong components that touch the frame (desk, paper edge), or None."""
    if not (strong[0].any() or strong[-1].any() or strong[:, 0].any() or strong[:, -1].any()):
        return None
    # Found at a quarter of the resolution (blocks holding any strong pixel), which is plenty
    # for "long and at the frame" and a sixteenth of the labelling work.
    small = cv2.resize(strong, (max(1, strong.shape[1] // 4), max(1, strong.shape[0] // 4)),
                       interpolation=cv2.INTER_AREA)
    small = (small > 0).astype(np.uint8)
    height, width = small.shape
    count, labels, stats = label_stats(small)
    x, y, w, h = (stats[1:, k] for k in range(4))
    touches = (x == 0) | (y == 0) | (x + w == width) | (y + h == height)
    long_ones = np.flatnonzero(touches & ((w > 0.4 * width) | (h > 0.4 * height))) + 1
    if not len(long_ones):
        return None
    chosen = np.zeros(count, bool)
    chosen[long_ones] = True
    edges = cv2.resize(chosen[labels].astype(np.uint8), strong.shape[::-1], interpolation=cv2.INTER_NEAREST)
    return (edges > 0) & (strong > 0)


def ink_mask(ink: np.ndarray) -> np.ndarray:
    """uint8 0/255 mask of ink strokes, or all zeros when nothing stands out from the paper.

    Hysteresis relative to the darkest ink: strokes must hold some strong ink, and their faint
    anti-aliased edges are kept only right next to it, so faint paper lines and shadow borders
    far from any stroke disappear.
    """
    smooth = cv2.GaussianBlur(ink, (3, 3), 0)
    peak = int(smooth.max())
    if peak < MIN_INK_CONTRAST * 255:
        return np.zeros(ink.shape, np.uint8)
    noise = quantile(ink[::3, ::3], 0.4)  # most of a photo is paper
    strong = (ink > max(40.0, 0.38 * peak, 10 * noise)).astype(np.uint8) * 255
    edges = _frame_edges(strong)
    if edges is not None:
        # The darkest "ink" is the desk or a shadow border at the frame: the writing's own
        # darkness sets the threshold, or faint digits would fall below it.
        # (the blurred rim of the desk, just outside the strong part, does not count either)
        rim = cv2.dilate(edges.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        inner = int(np.where(rim, 0, smooth).max())
        if MIN_INK_CONTRAST * 255 <= inner < peak:
            peak = inner
            strong = (ink > max(40.0, 0.38 * peak, 10 * noise)).astype(np.uint8) * 255
    weak = (ink > max(22.0, 0.22 * peak, 6 * noise)).astype(np.uint8) * 255
    return cv2.bitwise_and(weak, cv2.dilate(strong, np.ones((5, 5), np.uint8)))


def _region(labels: np.ndarray, group: Group) -> DigitRegion:
    x, y, w, h = group.x0, group.y0, group.width, group.height
    own = own_mask(labels, group)
    soft_mask = cv2.dilate(own, np.ones((3, 3), np.uint8))
    return DigitRegion((x, y, w, h), soft_mask, stroke_width(own))


def _pen_width(labels: np.ndarray, groups: list[Group]) -> float:
    """The pen width of the writing: median stroke width of the three largest non-solid pieces."""
    strokes = []
    compact = [g for g in groups if max(g.width, g.height) <= 4 * min(g.width, g.height)] or groups
    for group in sorted(compact, key=lambda g: g.area, reverse=True):
        stroke = stroke_width(own_mask(labels, group))
        if stroke <= 0.38 * max(group.width, group.height):
            strokes.append(stroke)
        if len(strokes) == 3:
            break
    return float(np.median(strokes)) if strokes else 3.0


def _keep_thick(mask: np.ndarray, stroke: float, labels: np.ndarray, stats: np.ndarray) -> np.ndarray:
    """Remove structures much thinner than the pen (paper lines), keeping the strokes' edges.

    Compact pieces of a digit's size stay whole: a digit written thinner than its neighbours
    (less pressure, a finer pen) is no paper line.
    """
    size = max(3, int(0.55 * stroke) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    kept = cv2.bitwise_and(mask, cv2.dilate(opened, kernel))
    x, y, w, h = (stats[:, k] for k in range(4))
    inside = (x > 0) & (y > 0) & (x + w < mask.shape[1]) & (y + h < mask.shape[0])
    tall = max(MIN_DIGIT_HEIGHT, 2 * stroke)
    compact = inside & (np.maximum(w, h) <= 3 * np.minimum(w, h)) & (h >= tall) & (h < 0.4 * mask.shape[0])
    compact[0] = False
    if compact.any():
        kept[compact[labels]] = 255
    return kept


def _segment(gray: np.ndarray, kernel: int) -> tuple[np.ndarray, np.ndarray, list[DigitRegion]]:
    ink = ink_map(gray, kernel)
    mask = ink_mask(ink)
    stats: list[np.ndarray] = []
    labels, groups = components(mask, stats)
    long_ones = long_labels(labels, stats[0])
    # (digits that fill much of the photo count as long: their pen width still counts)
    stroke = _pen_width(labels, [g for g in groups if g.labels[0] not in long_ones] or groups)
    if stroke >= 5:  # strokes clearly thicker than printed lines: open away all thinner things
        mask = _keep_thick(mask, stroke, labels, stats[0])
        stats = []
        labels, groups = components(mask, stats)
        long_ones = long_labels(labels, stats[0])
    if long_ones:
        mask = separate_lines(mask, labels, long_ones, ink, stroke)
        labels, groups = components(mask)
    groups = split_touching(merge_pieces([g for g in groups if not is_blob(g, labels)]), labels)
    groups = join_broken_rings(groups, labels, stroke)
    groups = drop_shadow_tips([g for g in groups if digit_like(g, labels, ink)], labels, ink, gray)
    groups = [g for g in groups if not line_fragment(g, labels, ink)]
    regions = [_region(labels, g) for g in best_row(groups)] if groups else []
    return ink, mask, regions


def _estimate_pen_width(gray: np.ndarray) -> float:
    """Pen width in pixels of `gray`, from a quick coarse pass at low resolution."""
    scale = min(1.0, ESTIMATE_LONG_SIDE / max(gray.shape))
    small = shrunk(gray, ESTIMATE_LONG_SIDE)
    mask = ink_mask(ink_map(small, _odd(max(small.shape) * 0.14, 7)))
    height, width = mask.shape
    labels, groups = components(mask)
    # Paper lines are long and narrow (those running to the frame are gone already); a digit
    # written large may span most of the photo and still counts.
    groups = [g for g in groups if g.height >= MIN_DIGIT_HEIGHT * scale
              and (max(g.width, g.height) <= 6 * min(g.width, g.height)
                   or (g.width <= 0.45 * width and g.height <= 0.45 * height))]
    return _pen_width(labels, groups) / scale


def find_digits(gray: np.ndarray) -> Segmentation:
    """The digits of the main row, left to right.

    The paper is estimated with a kernel a few pen widths wide: wide enough to erase the ink,
    narrow enough to follow shadows and paper edges closely. The pen width comes from a quick
    coarse pass at low resolution.
    """
    inverted = polarity_inverted(gray)
    if inverted:
        gray = 255 - gray
    long_side = max(gray.shape)
    fine, coarse = _odd(long_side * 0.045, 7), _odd(long_side * 0.14, 7)
    kernel = min(coarse, max(fine, _odd(4 * _estimate_pen_width(gray) + 4)))
    ink, mask, regions = _segment(gray, kernel)
    if not regions and kernel < coarse:
        ink, mask, regions = _segment(gray, coarse)
    elif kernel < coarse and max(r.stroke_width for r in regions) > 0.3 * kernel:
        # Strokes nearly as wide as the kernel: bold writing the estimate missed; parts of it
        # were taken for paper. Once more with a kernel that fits them.
        wider = min(coarse, _odd(4 * max(r.stroke_width for r in regions) + 4))
        ink_w, mask_w, regions_w = _segment(gray, wider)
        if regions_w:
            ink, mask, regions = ink_w, mask_w, regions_w
    if regions:
        pen = float(np.median([r.stroke_width for r in regions]))
        labels, faint = faint_digits(gray, ink, [r.box for r in regions], pen)
        if faint:
            regions = sorted(regions + [_region(labels, g) for g in faint], key=lambda r: r.box[0])
            mask = np.maximum(mask, (labels > 0).astype(np.uint8) * 255)
    kept = np.zeros_like(mask)
    for region in regions:
        x, y, w, h = region.box
        kept[y: y + h, x: x + w] |= mask[y: y + h, x: x + w] & region.mask * 255
    return Segmentation(ink, kept, regions, inverted)

