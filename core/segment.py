"""Finding the digits of one row in a grey photo: soft ink map, ink mask, digit regions.

1. Polarity: ink is the sparse part of the image, so compare how far pixels fall below and rise
   above a large median; light ink on a dark board is inverted to dark ink on light.
2. Background: a morphological closing at low resolution erases the ink and keeps the paper,
   its tint, light gradients and shadow edges; dividing by it gives a soft ink map in 0..1 that
   does not care about the lighting (shadows scale paper and ink alike).
3. Mask: hysteresis on the ink map relative to the darkest ink, so faint paper lines and shadow
   edges only survive right next to real strokes; long thin structures (ruled/squared paper
   lines, paper edges) are opened away.
4. Regions: connected components, merged when they overlap horizontally (broken strokes of one
   digit), specks dropped, the row followed from its largest digit, touching digits split.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import cv2
import numpy as np

BG_LONG_SIDE = 128
MIN_INK_CONTRAST = 0.15
MAX_COMPONENTS = 300
MIN_DIGIT_HEIGHT = 7
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


def polarity_inverted(gray: np.ndarray) -> bool:
    """Whether the photo is light ink on a dark background.

    Ink is the sparse part of the picture: compare how far pixels fall below and rise above a
    large median (the median ignores the ink and keeps the edges of the desk and of shadows).
    """
    height, width = gray.shape
    scale = min(1.0, BG_LONG_SIDE / max(height, width))
    small = gray
    if scale < 1:
        small = cv2.resize(gray, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
    median = cv2.medianBlur(small, _odd(max(small.shape) * 0.25, 5))
    diff = small.astype(np.int16) - median.astype(np.int16)
    darker = int(np.clip(-diff - 12, 0, None).sum())
    lighter = int(np.clip(diff - 12, 0, None).sum())
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
    floor = max(1, int(0.35 * float(np.percentile(background, 90))))
    if background.shape != gray.shape:
        background = cv2.resize(background, (width, height), interpolation=cv2.INTER_LINEAR)
    missing = cv2.subtract(background, cv2.GaussianBlur(gray, (3, 3), 0))
    return cv2.divide(missing, np.maximum(background, floor).astype(np.uint8), scale=255)


def ink_mask(ink: np.ndarray) -> np.ndarray:
    """uint8 0/255 mask of ink strokes, or all zeros when nothing stands out from the paper.

    Hysteresis relative to the darkest ink: strokes must hold some strong ink, and their faint
    anti-aliased edges are kept only right next to it, so faint paper lines and shadow borders
    far from any stroke disappear.
    """
    peak = int(cv2.GaussianBlur(ink, (3, 3), 0).max())
    if peak < MIN_INK_CONTRAST * 255:
        return np.zeros(ink.shape, np.uint8)
    noise = float(np.percentile(ink[::3, ::3], 40))  # most of a photo is paper
    strong = (ink > max(40.0, 0.38 * peak, 10 * noise)).astype(np.uint8) * 255
    weak = (ink > max(22.0, 0.22 * peak, 6 * noise)).astype(np.uint8) * 255
    return cv2.bitwise_and(weak, cv2.dilate(strong, np.ones((5, 5), np.uint8)))


def _remove_lines(mask: np.ndarray, labels: np.ndarray, long_ones: list[int], stroke: float) -> np.ndarray:
    """Open away structures thinner than the pen inside components that span much of the image.

    Printed paper lines are several times thinner than pen strokes; a digit that touches a line
    keeps its strokes and loses the line.
    """
    part = np.isin(labels, long_ones).astype(np.uint8) * 255
    size = max(3, int(0.75 * stroke) | 1)
    opened = cv2.morphologyEx(part, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    kept = cv2.bitwise_and(part, cv2.dilate(opened, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))))
    return np.where(part > 0, kept, mask).astype(np.uint8)


@dataclass
class _Group:
    x0: int
    y0: int
    x1: int
    y1: int
    labels: list[int]
    area: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def cy(self) -> float:
        return (self.y0 + self.y1) / 2

    def absorb(self, other: _Group) -> None:
        self.x0, self.y0 = min(self.x0, other.x0), min(self.y0, other.y0)
        self.x1, self.y1 = max(self.x1, other.x1), max(self.y1, other.y1)
        self.labels += other.labels
        self.area += other.area


def _belongs_together(a: _Group, b: _Group, max_height: float) -> bool:
    overlap = min(a.x1, b.x1) - max(a.x0, b.x0)
    vertical_gap = max(a.y0, b.y0) - min(a.y1, b.y1)
    merged_height = max(a.y1, b.y1) - min(a.y0, b.y0)
    if merged_height > max_height:
        return False
    taller = max(a.height, b.height)
    # Pieces stacked one above the other (a broken slanted stroke) may barely overlap.
    stacked = -0.1 * min(a.height, b.height) <= vertical_gap < 0.5 * taller and overlap > -0.1 * taller
    return stacked or (overlap > 0.45 * min(a.width, b.width) and vertical_gap < 0.6 * taller)


def _merge(groups: list[_Group]) -> list[_Group]:
    """Merge pieces of one digit; a merge may not make a group much taller than a typical one."""
    if not groups:
        return groups
    largest = max(g.area for g in groups)
    typical = float(np.median([g.height for g in groups if g.area >= 0.05 * largest]))
    max_height = 2.2 * typical
    merged = True
    while merged:
        merged = False
        groups.sort(key=lambda g: g.x0)
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                if groups[j].x0 >= groups[i].x1 + 0.1 * max_height:
                    break
                if _belongs_together(groups[i], groups[j], max_height):
                    groups[i].absorb(groups.pop(j))
                    merged = True
                    break
            if merged:
                break
    return groups


def _follow_row(groups: list[_Group], anchor: _Group) -> list[_Group]:
    """The row through `anchor`: similar heights, each group near its neighbour's line."""
    ref_h = anchor.height
    candidates = sorted((g for g in groups if g.height >= 0.55 * ref_h and g.area >= 0.04 * anchor.area
                         and g.height <= 1.8 * ref_h), key=lambda g: g.x0)
    start = candidates.index(anchor)
    row = [anchor]
    for direction in (1, -1):
        last, k = anchor, start + direction
        while 0 <= k < len(candidates):
            if abs(candidates[k].cy - last.cy) < 0.6 * ref_h:
                last = candidates[k]
                row.append(last)
            k += direction
    return sorted(row, key=lambda g: g.x0)


def _best_row(groups: list[_Group]) -> list[_Group]:
    """Try the row through each of the largest groups; the row of most sizeable digits wins."""
    anchors = sorted(groups, key=lambda g: g.area, reverse=True)[:4]

    def score(row: list[_Group], anchor: _Group) -> tuple[int, int]:
        sizeable = sum(g.height >= 0.5 * anchor.height and g.area >= 0.15 * anchor.area for g in row)
        return sizeable, sum(g.area for g in row)

    return max((_follow_row(groups, a) for a in anchors), key=lambda r: score(r, max(r, key=lambda g: g.area)))


def _stroke_width(own: np.ndarray) -> float:
    """Pen width of a binary shape: 2 * area / boundary length (exact for long thin strokes)."""
    eroded = cv2.erode(own, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    area = int(cv2.countNonZero(own))
    return 2 * area / max(area - int(cv2.countNonZero(eroded)), 1)


def _own(labels: np.ndarray, group: _Group) -> np.ndarray:
    """uint8 0/1 mask of the group's pixels inside its box."""
    window = labels[group.y0: group.y1, group.x0: group.x1]
    return (np.isin(window, group.labels) if len(group.labels) > 1 else window == group.labels[0]).astype(np.uint8)


def _region(labels: np.ndarray, group: _Group) -> DigitRegion:
    x, y, w, h = group.x0, group.y0, group.width, group.height
    own = _own(labels, group)
    soft_mask = cv2.dilate(own, np.ones((3, 3), np.uint8))
    return DigitRegion((x, y, w, h), soft_mask, _stroke_width(own))


def _is_blob(group: _Group, labels: np.ndarray) -> bool:
    """Solid dark areas (shadow tips, the desk, a thumb) are far thicker than any pen stroke."""
    if max(group.width, group.height) < 12:
        return False
    return _stroke_width(_own(labels, group)) > 0.38 * max(group.width, group.height)


def _split_touching(groups: list[_Group], labels: np.ndarray) -> list[_Group]:
    """Cut groups much wider than the row's digits (neighbours that touch) at their thinnest columns."""
    if not groups:
        return groups
    heights = [g.height for g in groups if g.width <= 1.2 * g.height]
    typical = float(np.median(heights)) if heights else float(np.median([g.height for g in groups]))
    result = []
    for group in groups:
        if group.width <= 1.45 * max(group.height, typical) or group.height < 0.6 * typical:
            result.append(group)
            continue
        parts = max(2, round(group.width / (0.85 * max(group.height, typical))))
        profile = _own(labels, group).sum(axis=0).astype(np.float32)
        cuts = [0]
        for k in range(1, parts):
            centre = round(group.width * k / parts)
            reach = group.width // (2 * parts)
            lo, hi = max(cuts[-1] + 2, centre - reach), min(group.width - 2, centre + reach)
            cuts.append(lo + int(np.argmin(profile[lo:hi])) if hi > lo else centre)
        cuts.append(group.width)
        for left, right in itertools.pairwise(cuts):
            piece = _Group(group.x0 + left, group.y0, group.x0 + right, group.y1, group.labels,
                           int(profile[left:right].sum()))
            rows = np.flatnonzero(_own(labels, piece).any(axis=1))
            if len(rows):
                piece.y0, piece.y1 = group.y0 + int(rows[0]), group.y0 + int(rows[-1]) + 1
                result.append(piece)
    return result


def _digit_like(group: _Group, labels: np.ndarray, ink: np.ndarray) -> bool:
    """Not a speck, a blob, a streak of desk noise or a leftover piece of a faint paper line."""
    if group.height < MIN_DIGIT_HEIGHT or group.width > 2.5 * group.height:
        return False
    own = _own(labels, group)
    stroke = _stroke_width(own)
    if stroke > 0.38 * max(group.width, group.height):
        return False  # solid: a shadow tip, the desk, a thumb
    if max(group.width, group.height) > 25 * stroke:  # long and hair-thin: ink or a printed line?
        window = ink[group.y0: group.y1, group.x0: group.x1]
        return float(window[own > 0].mean()) > 0.6 * float(ink.max())
    return True


def _drop_shadow_tips(groups: list[_Group], labels: np.ndarray, ink: np.ndarray) -> list[_Group]:
    """Drop solid, convex, pale pieces: the narrow end of a shadow that the paper estimate missed.

    Pen ink is darker than a shadow, and digits are neither convex nor solid (a bold "1" is
    solid and convex, but as dark as the rest of the writing).
    """
    if len(groups) < 2:
        return groups
    levels = []
    for group in groups:
        own = _own(labels, group)
        levels.append(float(np.percentile(ink[group.y0: group.y1, group.x0: group.x1][own > 0], 90)))
    darkest = max(levels)
    kept = []
    for group, level in zip(groups, levels, strict=True):
        if level < 0.65 * darkest:
            own = _own(labels, group)
            hull = cv2.convexHull(cv2.findNonZero(own))
            solidity = float(own.sum()) / max(cv2.contourArea(hull), 1.0)
            if solidity > 0.8 and _stroke_width(own) > 0.2 * max(group.width, group.height):
                continue
        kept.append(group)
    return kept


def _components(mask: np.ndarray) -> tuple[np.ndarray, list[_Group]]:
    height, width = mask.shape
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= 4) + 1  # specks of noise go first, in bulk
    if len(keep) > MAX_COMPONENTS:  # a very noisy photo: the largest pieces are enough
        keep = keep[np.argsort(stats[keep, cv2.CC_STAT_AREA])[-MAX_COMPONENTS:]]
    groups = []
    for i in keep:
        x, y, w, h, area = (int(v) for v in stats[i])
        touches = x == 0 or y == 0 or x + w == width or y + h == height
        if touches and (w > 0.4 * width or h > 0.4 * height):
            continue  # paper edges, the desk, shadow borders
        groups.append(_Group(x, y, x + w, y + h, [int(i)], area))
    return labels, groups


def _pen_width(labels: np.ndarray, groups: list[_Group]) -> float:
    """The pen width of the writing: median stroke width of the three largest non-solid pieces."""
    strokes = []
    compact = [g for g in groups if max(g.width, g.height) <= 4 * min(g.width, g.height)] or groups
    for group in sorted(compact, key=lambda g: g.area, reverse=True):
        stroke = _stroke_width(_own(labels, group))
        if stroke <= 0.38 * max(group.width, group.height):
            strokes.append(stroke)
        if len(strokes) == 3:
            break
    return float(np.median(strokes)) if strokes else 3.0


def _keep_thick(mask: np.ndarray, stroke: float) -> np.ndarray:
    """Remove structures much thinner than the pen (paper lines), keeping the strokes' edges."""
    size = max(3, int(0.55 * stroke) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    return cv2.bitwise_and(mask, cv2.dilate(opened, kernel))


def _segment(gray: np.ndarray, kernel: int) -> tuple[np.ndarray, np.ndarray, list[DigitRegion]]:
    ink = ink_map(gray, kernel)
    mask = ink_mask(ink)
    height, width = mask.shape
    labels, groups = _components(mask)
    long_ones = [g for g in groups if g.width > 0.45 * width or g.height > 0.45 * height]
    stroke = _pen_width(labels, [g for g in groups if g not in long_ones])
    if stroke >= 5:  # strokes clearly thicker than printed lines: open away all thinner things
        mask = _keep_thick(mask, stroke)
        labels, groups = _components(mask)
    elif long_ones:
        mask = _remove_lines(mask, labels, [g.labels[0] for g in long_ones], stroke)
        labels, groups = _components(mask)
    groups = _split_touching(_merge([g for g in groups if not _is_blob(g, labels)]), labels)
    groups = _drop_shadow_tips([g for g in groups if _digit_like(g, labels, ink)], labels, ink)
    regions = [_region(labels, g) for g in _best_row(groups)] if groups else []
    return ink, mask, regions


def _estimate_pen_width(gray: np.ndarray) -> float:
    """Pen width in pixels of `gray`, from a quick coarse pass at low resolution."""
    scale = min(1.0, ESTIMATE_LONG_SIDE / max(gray.shape))
    small = gray
    if scale < 1:
        small = cv2.resize(gray, (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale))),
                           interpolation=cv2.INTER_AREA)
    mask = ink_mask(ink_map(small, _odd(max(small.shape) * 0.14, 7)))
    height, width = mask.shape
    labels, groups = _components(mask)
    groups = [g for g in groups if g.width <= 0.45 * width and g.height <= 0.45 * height
              and g.height >= MIN_DIGIT_HEIGHT * scale]
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
    kept = np.zeros_like(mask)
    for region in regions:
        x, y, w, h = region.box
        kept[y: y + h, x: x + w] |= mask[y: y + h, x: x + w] & region.mask * 255
    return Segmentation(ink, kept, regions, inverted)


def _median_stroke(regions: list[DigitRegion]) -> float:
    return float(np.median([r.stroke_width for r in regions]))
