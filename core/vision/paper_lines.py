"""Paper lines cut away from the digits written on them.

A digit written across a ruled or squared line is, in the ink mask, one component with the lines,
which run to the frame; without this it would be dropped with them as a paper line or edge.
"""

from __future__ import annotations

import cv2
import numpy as np

from core.vision.grouping import Group, components, label_stats, own_mask, quantile, stroke_width


def odd(value: float, minimum: int = 3) -> int:
    size = max(minimum, round(value))
    return size if size % 2 else size + 1


def long_labels(labels: np.ndarray, stats: np.ndarray, *, at_frame: bool = False) -> list[int]:
    """Labels of components spanning much of the image that reach the frame (paper lines, edges,
    and what touches them) or, unless `at_frame`, are long and narrow (a line broken off).

    A digit written large spans much of the photo too, but it is neither.
    """
    height, width = labels.shape
    x, y, w, h = (stats[1:, k] for k in range(4))
    chosen = (w > 0.4 * width) | (h > 0.4 * height)
    touches = (x == 0) | (y == 0) | (x + w == width) | (y + h == height)
    chosen &= touches if at_frame else touches | (np.maximum(w, h) > 6 * np.minimum(w, h))
    return [int(i) + 1 for i in np.flatnonzero(chosen)]


def separate_lines(mask: np.ndarray, labels: np.ndarray, long_ones: list[int], ink: np.ndarray,
                    stroke: float) -> np.ndarray:
    """Cut paper lines (and the frame's long edges) away from the digits that touch them.

    Inside components that span much of the image, a pixel stays when it belongs to a structure
    at least as thick as the pen (printed lines are thinner than pen strokes) or when it is
    clearly darker than the lines themselves (ink over a line, or pencil on bold lines). What
    then still spans the image is a line as bold as the pen: only its darker-than-line pixels
    stay. Digits written on a line would otherwise go with the line as one long component.
    """
    part = np.isin(labels, long_ones).astype(np.uint8) * 255
    # The lines' width: the typical ridge of the distance map (lines make up most of the part).
    distance = cv2.distanceTransform(part, cv2.DIST_L2, 3)
    ridge = (distance > 0) & (distance >= cv2.dilate(distance, np.ones((3, 3), np.uint8)))
    line_width = 2 * float(np.median(distance[ridge])) if ridge.any() else stroke
    size = max(3, odd(1.5 * line_width + 1))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    opened = cv2.morphologyEx(part, cv2.MORPH_OPEN, disc)
    # Where lines cross, the disc fits too: a stroke leaves more than a few discs' worth.
    count, opened_labels, opened_stats = label_stats(opened)
    small = np.flatnonzero(opened_stats[:, cv2.CC_STAT_AREA] < 3 * cv2.countNonZero(disc))
    if len(small) and count > 1:
        opened[np.isin(opened_labels, small[small > 0])] = 0
    thick = cv2.bitwise_and(part, cv2.dilate(opened, disc))
    thin = cv2.subtract(part, thick)
    # The level of the lines: the core of what was opened away, or else the bulk of the component.
    # Thin pixels far from thick ones: lines rather than a digit's thin strokes.
    far = thin > 0
    if cv2.countNonZero(thick):
        far &= cv2.distanceTransform(cv2.bitwise_not(thick), cv2.DIST_L1, 3) > 3 * stroke
    line_level = quantile(ink[far], 0.9) if np.count_nonzero(far) >= 20 else quantile(ink[part > 0], 0.5)
    darker = ((ink > 1.4 * line_level + 10) & (part > 0)).astype(np.uint8) * 255
    dark = cv2.bitwise_and(part, cv2.dilate(darker, np.ones((3, 3), np.uint8)))
    kept = cv2.bitwise_or(thick, dark)
    stats: list[np.ndarray] = []
    kept_labels, _ = components(kept, stats)
    still_long = long_labels(kept_labels, stats[0], at_frame=True)
    if still_long:
        bold = np.isin(kept_labels, still_long)
        kept[bold] = dark[bold]
    # Ends of lines cut at the frame are no digits, nor are pieces of line that are only darker
    # than the rest (a shadow's edge across a line): a piece must hold a stroke thicker than a line.
    count, kept_labels, kept_stats = label_stats(kept)
    edge_labels = np.unique(np.concatenate([kept_labels[0], kept_labels[-1], kept_labels[:, 0], kept_labels[:, -1]]))
    has_thick = np.zeros(count, bool)
    has_thick[np.unique(kept_labels[opened > 0])] = True
    for label in range(1, count):
        if label in edge_labels or not has_thick[label]:
            x, y, w, h = kept_stats[label, :4]
            window = kept_labels[y: y + h, x: x + w] == label
            if label in edge_labels or stroke_width(window.astype(np.uint8)) < 1.3 * line_width:
                kept[y: y + h, x: x + w][window] = 0
    return np.where(part > 0, kept, mask).astype(np.uint8)


def line_fragment(group: Group, labels: np.ndarray, ink: np.ndarray) -> bool:
    """Whether a narrow piece is a stretch of a paper line that came out darker than the rest
    (across a shadow's edge, say): faint ink goes on along its axis beyond both of its ends,
    whereas beyond the ends of a written "1" there is paper.
    """
    if group.width > 0.5 * group.height or group.height < 8:
        return False
    own = own_mask(labels, group)
    rows = np.flatnonzero(own.any(axis=1))
    band = max(1, len(rows) // 8)
    top_xs, bottom_xs = np.nonzero(own[rows[:band]])[1], np.nonzero(own[rows[-band:]])[1]
    top = np.array([group.x0 + top_xs.mean(), group.y0 + rows[0]])
    bottom = np.array([group.x0 + bottom_xs.mean(), group.y0 + rows[-1]])
    axis = (bottom - top) / max(float(np.hypot(*(bottom - top))), 1.0)
    level = quantile(ink[group.y0: group.y1, group.x0: group.x1][own > 0], 0.9)
    reach = 2 * stroke_width(own) + 2
    height, width = ink.shape
    sides = []
    for end, direction in ((bottom, axis), (top, -axis)):
        steps = np.arange(reach, reach + 0.8 * group.height)
        points = np.round(end + steps[:, None] * direction).astype(int)
        inside = (points[:, 0] >= 1) & (points[:, 0] < width - 1) & (points[:, 1] >= 0) & (points[:, 1] < height)
        if inside.sum() < 0.5 * len(steps):
            continue
        xs, ys = points[inside, 0], points[inside, 1]
        # The widest of three neighbouring columns: the axis is only roughly known.
        along = np.maximum(np.maximum(ink[ys, xs - 1], ink[ys, xs]), ink[ys, xs + 1])
        sides.append(float(np.median(along)))
    return bool(sides) and min(sides) > max(15.0, 0.25 * level)

