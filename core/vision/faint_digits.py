"""Completing the row: faint digits that fell below the ink threshold, broken rings rejoined.

The ink threshold follows the darkest writing in the photo, so a digit written with less
pressure, a thinner stroke or more blur than its neighbours can fall below it and go missing
from the row. Along the row (and only there: the photo elsewhere has paper lines, shadow edges
and texture that a low threshold would take for ink), pieces of a digit's size that stand out
from the paper at a lower threshold are added, when they pass the same tests as the others.
"""

from __future__ import annotations

import cv2
import numpy as np

from core.vision.grouping import (
    MIN_DIGIT_HEIGHT,
    SHADOW_SHARE,
    Group,
    components,
    continues_into_shadow,
    digit_like,
    is_blob,
    merge_pieces,
    own_mask,
    quantile,
    stroke_width,
)
from core.vision.paper_lines import line_fragment


def faint_digits(gray: np.ndarray, ink: np.ndarray, boxes: list[tuple[int, int, int, int]], pen: float
                 ) -> tuple[np.ndarray, list[Group]]:
    """Labels (full size) and the groups of faint digit-sized pieces along the row of `boxes`,
    outside those boxes; `pen` is the typical stroke width of the digits found."""
    height, width = ink.shape
    typical = float(np.median([b[3] for b in boxes]))
    top = max(0, round(min(b[1] for b in boxes) - 0.3 * typical))
    bottom = min(height, round(max(b[1] + b[3] for b in boxes) + 0.3 * typical))
    band = ink[top:bottom]
    levels = [quantile(ink[y: y + h, x: x + w], 0.98) for x, y, w, h in boxes]
    noise = quantile(ink[::3, ::3], 0.4)
    # Thresholds against the faintest digit found, the paper's noise and absolute floors that
    # keep them above JPEG ringing and paper texture.
    faintest = min(levels)
    # The noise term is half the whole photo's: only digit-sized, aligned pieces count here.
    strong = (band > max(30.0, 0.25 * faintest, 5 * noise)).astype(np.uint8) * 255
    margin = max(2, round(0.05 * typical))
    for x, y, w, h in boxes:
        strong[max(0, y - top - margin): y - top + h + margin, max(0, x - margin): x + w + margin] = 0
    if cv2.countNonZero(strong) < MIN_DIGIT_HEIGHT:  # nothing more along the row (the usual case)
        return np.zeros(ink.shape, np.int32), []
    weak = (band > max(18.0, 0.15 * faintest, 3 * noise)).astype(np.uint8) * 255
    found = cv2.bitwise_and(weak, cv2.dilate(strong, np.ones((5, 5), np.uint8)))
    for x, y, w, h in boxes:
        found[max(0, y - top - margin): y - top + h + margin, max(0, x - margin): x + w + margin] = 0
    band_labels, groups = components(found)
    labels = np.zeros(ink.shape, band_labels.dtype)
    labels[top:bottom] = band_labels
    for group in groups:
        group.y0, group.y1 = group.y0 + top, group.y1 + top
    groups = merge_pieces([g for g in groups if not is_blob(g, labels)])
    paper = quantile(gray[::4, ::4], 0.95)
    centre = float(np.median([b[1] + b[3] / 2 for b in boxes]))
    kept = []
    for group in groups:
        if not (0.6 * typical <= group.height <= 1.5 * typical and group.width <= 1.5 * typical):
            continue
        if abs(group.cy - centre) > 0.35 * typical:
            continue
        # Cut by the frame: unreadable, and mostly where paper lines or the desk run out.
        if group.x0 == 0 or group.y0 == 0 or group.x1 == width or group.y1 == height:
            continue
        # Printed lines (and where they cross) are much thinner than the pen.
        if stroke_width(own_mask(labels, group)) < 0.4 * pen:
            continue
        if any(min(group.x1, x + w) - max(group.x0, x) > 0.3 * group.width for x, _, w, _ in boxes):
            continue
        if not digit_like(group, labels, ink) or line_fragment(group, labels, ink):
            continue
        # The end of a shadow is a wedge: only fairly solid pieces can be one.
        own = own_mask(labels, group)
        solidity = float(own.sum()) / max(cv2.contourArea(cv2.convexHull(cv2.findNonZero(own))), 1.0)
        if solidity > 0.5 and continues_into_shadow(group, labels, gray, paper) > SHADOW_SHARE:
            continue
        kept.append(group)
    return labels, kept


def _bulge(own: np.ndarray) -> float:
    """How far the middle of a piece lies left (< 0) or right (> 0) of its two ends, in pixels."""
    rows = np.flatnonzero(own.any(axis=1))
    if len(rows) < 6:
        return 0.0
    band = max(1, len(rows) // 6)
    columns = np.arange(own.shape[1])

    def centre(selected: np.ndarray) -> float:
        weights = own[selected].sum(axis=0)
        return float((weights * columns).sum() / max(weights.sum(), 1))

    middle = rows[len(rows) // 3: 2 * len(rows) // 3]
    ends = (centre(rows[:band]) + centre(rows[-band:])) / 2
    return centre(middle) - ends


def join_broken_rings(groups: list[Group], labels: np.ndarray, pen: float) -> list[Group]:
    """Join a "(" and the ")" right after it, of about the same height and side by side: a "0"
    (or the loop of a 6, 8, 9) written with a pen that skipped at its top and bottom."""
    groups = sorted(groups, key=lambda g: g.x0)
    joined: list[Group] = []
    for group in groups:
        if joined:
            left = joined[-1]
            short, tall = sorted((left.height, group.height))
            overlap = min(left.y1, group.y1) - max(left.y0, group.y0)
            gap = group.x0 - left.x1
            if (short >= 0.7 * tall and overlap >= 0.7 * short and -0.2 * short <= gap <= 0.2 * short
                    and max(left.width, group.width) <= 1.0 * short
                    and max(left.x1, group.x1) - left.x0 <= 1.6 * tall
                    and _bulge(own_mask(labels, left)) < -max(1.0, 0.5 * pen)
                    and _bulge(own_mask(labels, group)) > max(1.0, 0.5 * pen)):
                left.absorb(group)
                continue
        joined.append(group)
    return joined
