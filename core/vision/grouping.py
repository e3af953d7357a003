"""Grouping ink components into the digits of one row.

Components are merged when they are pieces of one digit (stacked, or overlapping horizontally),
specks, solid blobs, desk edges and pale solid shadow tips are dropped, touching neighbours are cut
at their thinnest column, and the row is followed from its largest digits.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import cv2
import numpy as np

MAX_COMPONENTS = 300
MIN_DIGIT_HEIGHT = 7
SHADOW_SHARE = 0.1
DARK_SHADOW_SHARE = 0.2


def label_stats(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """cv2.connectedComponentsWithStats (8-connected) with the block-based algorithm: the same
    components, about twice as fast as the default one here."""
    count, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(mask, 8, cv2.CV_32S, cv2.CCL_BBDT)
    return count, labels, stats


def quantile(values: np.ndarray, q: float) -> float:
    """The q-quantile (nearest rank) by partial sort: several times faster than np.percentile."""
    flat = values.ravel()
    if flat.size == 0:
        return 0.0
    k = round(q * (flat.size - 1))
    return float(np.partition(flat, k)[k])


@dataclass
class Group:
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

    def absorb(self, other: Group) -> None:
        self.x0, self.y0 = min(self.x0, other.x0), min(self.y0, other.y0)
        self.x1, self.y1 = max(self.x1, other.x1), max(self.y1, other.y1)
        self.labels += other.labels
        self.area += other.area


def belongs_together(a: Group, b: Group, max_height: float) -> bool:
    overlap = min(a.x1, b.x1) - max(a.x0, b.x0)
    vertical_gap = max(a.y0, b.y0) - min(a.y1, b.y1)
    merged_height = max(a.y1, b.y1) - min(a.y0, b.y0)
    if merged_height > max_height:
        return False
    taller = max(a.height, b.height)
    # Pieces stacked one above the other (a broken slanted stroke) may barely overlap.
    stacked = -0.1 * min(a.height, b.height) <= vertical_gap < 0.5 * taller and overlap > -0.1 * taller
    return stacked or (overlap > 0.45 * min(a.width, b.width) and vertical_gap < 0.6 * taller)


def merge_pieces(groups: list[Group]) -> list[Group]:
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
                if belongs_together(groups[i], groups[j], max_height):
                    groups[i].absorb(groups.pop(j))
                    merged = True
                    break
            if merged:
                break
    return groups


def follow_row(groups: list[Group], anchor: Group) -> list[Group]:
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


def best_row(groups: list[Group]) -> list[Group]:
    """Try the row through each of the largest groups; the row of most sizeable digits wins."""
    anchors = sorted(groups, key=lambda g: g.area, reverse=True)[:4]

    def score(row: list[Group], anchor: Group) -> tuple[int, int]:
        sizeable = sum(g.height >= 0.5 * anchor.height and g.area >= 0.15 * anchor.area for g in row)
        return sizeable, sum(g.area for g in row)

    return max((follow_row(groups, a) for a in anchors), key=lambda r: score(r, max(r, key=lambda g: g.area)))


def stroke_width(own: np.ndarray) -> float:
    """Pen width of a binary shape: 2 * area / boundary length (exact for long thin strokes)."""
    eroded = cv2.erode(own, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    area = int(cv2.countNonZero(own))
    return 2 * area / max(area - int(cv2.countNonZero(eroded)), 1)


def own_mask(labels: np.ndarray, group: Group) -> np.ndarray:
    """uint8 0/1 mask of the group's pixels inside its box."""
    window = labels[group.y0: group.y1, group.x0: group.x1]
    return (np.isin(window, group.labels) if len(group.labels) > 1 else window == group.labels[0]).astype(np.uint8)


def is_blob(group: Group, labels: np.ndarray) -> bool:
    """Solid dark areas (shadow tips, the desk, a thumb) are far thicker than any pen stroke."""
    if max(group.width, group.height) < 12:
        return False
    return stroke_width(own_mask(labels, group)) > 0.38 * max(group.width, group.height)


def split_touching(groups: list[Group], labels: np.ndarray) -> list[Group]:
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
        profile = own_mask(labels, group).sum(axis=0).astype(np.float32)
        cuts = [0]
        for k in range(1, parts):
            centre = round(group.width * k / parts)
            reach = group.width // (2 * parts)
            lo, hi = max(cuts[-1] + 2, centre - reach), min(group.width - 2, centre + reach)
            cuts.append(lo + int(np.argmin(profile[lo:hi])) if hi > lo else centre)
        cuts.append(group.width)
        for left, right in itertools.pairwise(cuts):
            piece = Group(group.x0 + left, group.y0, group.x0 + right, group.y1, group.labels,
                           int(profile[left:right].sum()))
            rows = np.flatnonzero(own_mask(labels, piece).any(axis=1))
            if len(rows):
                piece.y0, piece.y1 = group.y0 + int(rows[0]), group.y0 + int(rows[-1]) + 1
                result.append(piece)
    return result


def digit_like(group: Group, labels: np.ndarray, ink: np.ndarray) -> bool:
    """Not a speck, a blob, a streak of desk noise or a leftover piece of a faint paper line."""
    if group.height < MIN_DIGIT_HEIGHT or group.width > 2.5 * group.height:
        return False
    own = own_mask(labels, group)
    stroke = stroke_width(own)
    if stroke > 0.38 * max(group.width, group.height):
        return False  # solid: a shadow tip, the desk, a thumb
    if max(group.width, group.height) > 25 * stroke:  # long and hair-thin: ink or a printed line?
        window = ink[group.y0: group.y1, group.x0: group.x1]
        return float(window[own > 0].mean()) > 0.6 * float(ink.max())
    return True


def _median3(gray: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """cv2.medianBlur(gray, 3)[y0:y1, x0:x1], computed on the window only (3, not 5: as good
    against sensor noise here, and several times faster)."""
    height, width = gray.shape
    ex0, ey0, ex1, ey1 = max(0, x0 - 1), max(0, y0 - 1), min(width, x1 + 1), min(height, y1 + 1)
    window = cv2.medianBlur(np.ascontiguousarray(gray[ey0:ey1, ex0:ex1]), 3)
    return window[y0 - ey0: y0 - ey0 + (y1 - y0), x0 - ex0: x0 - ex0 + (x1 - x0)]


def continues_into_shadow(group: Group, labels: np.ndarray, gray: np.ndarray, paper: float) -> float:
    """Share of the unmasked surroundings of a piece that are about as dark as the piece itself.

    A pen stroke is surrounded by paper, or by a shadow that is much lighter than ink in that
    shadow. The narrow end of a shadow is the only part of the shadow that the paper estimate
    missed: just beyond it the shadow goes on, as dark as the piece, but not taken for ink.
    """
    own = own_mask(labels, group)
    reach = max(3, round(1.5 * stroke_width(own)))
    margin = 2 * reach
    height, width = gray.shape
    x0, y0 = max(0, group.x0 - margin), max(0, group.y0 - margin)
    x1, y1 = min(width, group.x1 + margin), min(height, group.y1 + margin)
    # Beyond the frame the picture is taken to go on as it is at the edge: a shadow cut by the
    # frame goes on, whereas paper around a stroke stays paper.
    top, left = y0 - (group.y0 - margin), x0 - (group.x0 - margin)
    bottom, right = group.y1 + margin - y1, group.x1 + margin - x1
    pads = (top, bottom, left, right)
    # `window` is `gray` with sensor noise removed (a median), which would otherwise pass for
    # darkness around faint ink.
    raw = cv2.copyMakeBorder(gray[y0:y1, x0:x1], *pads, cv2.BORDER_REPLICATE)
    window = cv2.copyMakeBorder(_median3(gray, x0, y0, x1, y1), *pads, cv2.BORDER_REPLICATE)
    inked = cv2.copyMakeBorder((labels[y0:y1, x0:x1] > 0).astype(np.uint8), *pads, cv2.BORDER_CONSTANT, value=0)
    mine = np.zeros_like(inked)
    mine[margin: margin + group.height, margin: margin + group.width] = own
    level = quantile(raw[mine > 0], 0.3)  # thin strokes would not survive the median
    paper = quantile(window[inked == 0], 0.9) if (inked == 0).any() else paper
    dark = (window < level + 0.15 * max(paper - level, 0.0)).astype(np.uint8)
    rim = np.concatenate([dark[0], dark[-1], dark[:, 0], dark[:, -1]])
    if rim.mean() < 0.5 * min(SHADOW_SHARE, DARK_SHADOW_SHARE):
        return 0.0  # the darkness does not reach out of the piece's neighbourhood: not a shadow
    dark[cv2.dilate(inked - mine, np.ones((3, 3), np.uint8)) > 0] = 0
    dark[mine > 0] = 1
    # Only darkness joined to the piece counts (a shadow near a stroke, across paper, does not),
    # and only from one reach away, past the halo that blur leaves around strokes.
    _, joined_labels = cv2.connectedComponents(dark, connectivity=8)
    joined = np.isin(joined_labels, np.unique(joined_labels[mine > 0]))
    from_mine = cv2.distanceTransform(1 - mine, cv2.DIST_L2, 3)
    from_ink = cv2.distanceTransform(1 - inked, cv2.DIST_L2, 3)
    near = (from_mine <= 2 * reach) & (from_ink > reach)
    if not near.any():
        return 0.0
    return float(joined[near].mean())


def drop_shadow_tips(groups: list[Group], labels: np.ndarray, ink: np.ndarray,
                     gray: np.ndarray | None = None) -> list[Group]:
    """Drop pale pieces that are solid and convex or go on into a shadow: the narrow end of a
    shadow that the paper estimate missed.

    Pen ink is darker than a shadow, and digits are neither convex nor solid (a bold "1" is
    solid and convex, but as dark as the rest of the writing).
    """
    if len(groups) < 2:
        return groups
    levels = []
    for group in groups:
        own = own_mask(labels, group)
        levels.append(quantile(ink[group.y0: group.y1, group.x0: group.x1][own > 0], 0.9))
    darkest = max(levels)
    paper = quantile(gray[::4, ::4], 0.95) if gray is not None else 255.0
    kept = []
    for group, level in zip(groups, levels, strict=True):
        pale = level < 0.65 * darkest
        own = own_mask(labels, group)
        hull = cv2.convexHull(cv2.findNonZero(own))
        solidity = float(own.sum()) / max(cv2.contourArea(hull), 1.0)
        if pale and solidity > 0.8 and stroke_width(own) > 0.2 * max(group.width, group.height):
            continue
        # The end of a shadow is a wedge; only quite solid pieces can be one (a bold digit
        # across a shadow's edge, solidity 0.5-0.7, was taken for one; and the test costs a few
        # windows' worth of filtering).
        if gray is not None and solidity > 0.7 and continues_into_shadow(
                group, labels, gray, paper) > (SHADOW_SHARE if pale else DARK_SHADOW_SHARE):
            continue
        kept.append(group)
    return kept


def components(mask: np.ndarray, stats_out: list[np.ndarray] | None = None) -> tuple[np.ndarray, list[Group]]:
    """Labels and the groups of the pieces that could be (parts of) digits.

    `stats_out`, when given, receives OpenCV's component statistics (for long_labels).
    """
    height, width = mask.shape
    _, labels, stats = label_stats(mask)
    if stats_out is not None:
        stats_out.append(stats)
    keep = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= 4) + 1  # specks of noise go first, in bulk
    if len(keep) > MAX_COMPONENTS:  # a very noisy photo: the largest pieces are enough
        keep = keep[np.argsort(stats[keep, cv2.CC_STAT_AREA])[-MAX_COMPONENTS:]]
    groups = []
    for i in keep:
        x, y, w, h, area = (int(v) for v in stats[i])
        touches = x == 0 or y == 0 or x + w == width or y + h == height
        if touches and (w > 0.4 * width or h > 0.4 * height):
            continue  # paper edges, the desk, shadow borders
        groups.append(Group(x, y, x + w, y + h, [int(i)], area))
    return labels, groups
