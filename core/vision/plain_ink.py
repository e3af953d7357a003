"""A second, plainer look at a photo: one global ink threshold, for what core.vision.segment misses.

core.vision.segment is tuned for phone photos of a page (desk edges, paper lines, shadows); on a tight
crop, a small scan or a thin pen it can find nothing at all. This look makes fewer assumptions:
the paper is a large median of the photo, ink is the light missing relative to it, and one Otsu
threshold (with hysteresis) separates ink from paper. Optionally the photo is first padded with
paper, so that a digit cut by the frame of a tight crop is not taken for a paper edge.

Which look's reading is used is decided by the classifier (core.recognize.choose_candidate).
"""

from __future__ import annotations

import cv2
import numpy as np

from core.vision.grouping import (
    MIN_DIGIT_HEIGHT,
    Group,
    best_row,
    components,
    drop_shadow_tips,
    is_blob,
    merge_pieces,
    own_mask,
    quantile,
    split_touching,
)
from core.vision.grouping import stroke_width as measure_stroke
from core.vision.segment import DigitRegion, Segmentation, polarity_inverted, shrunk

# The paper is a median over a window half the photo's short side, computed at this long side.
PAPER_LONG_SIDE = 96
# Ink must be this much darker than the paper (of 255): below it a photo is blank paper.
MIN_INK = 30
# Ink must stand this many times above the paper's grain (see grain()): blank grainy paper peaks
# at 5-6 times it, the faintest writing of the real-photo dev set at 13 times.
GRAIN_FACTOR = 8
# How far (share of the long side) faint ink is followed from sure ink (see _mask). Chosen on
# simulated photos (120 singles + 80 rows per style, seeds 31/32/131/132; 0.015 and 0.06 read fewer
# rows; unlimited growth followed cheque guilloche into the digits). With the top-hat, against the
# former 2-pixel reach: classic 95.8%/92.5% -> 95.8%/93.8%, thin pen 74.2%/48.7% -> 77.5%/53.7%.
GROW_SHARE = 0.03
# Pieces shorter than this share of the tallest piece are specks, dots, commas and dashes.
MIN_HEIGHT_SHARE = 0.25
# Horizontal runs of ink longer than this share of the width are lines, not strokes of a digit.
LINE_SHARE = 0.3
LINE_OVER_HEIGHT = 1.2
# A piece filling more than this share of its box is solid (see _solid).
MAX_FILL = 0.6
# Nor is anything shorter than this share of the photo's long side a digit here: digits take 5% to
# 90% of a photo, and lower down are the leftovers of paper lines and shadow edges.
MIN_HEIGHT_OF_PHOTO = 0.04


def _paper(gray: np.ndarray) -> np.ndarray:
    height, width = gray.shape
    small = shrunk(gray, PAPER_LONG_SIDE)
    size = max(3, round(min(small.shape) * 0.5)) | 1
    # The median ignores ink covering less than half of its window; a small dilation then
    # lifts it to the paper's light side, so that grain and texture are not half "ink".
    paper = cv2.dilate(cv2.medianBlur(small, min(size, 255)), np.ones((3, 3), np.uint8))
    if paper.shape != gray.shape:
        paper = cv2.resize(paper, (width, height), interpolation=cv2.INTER_LINEAR)
    return paper


def plain_ink_map(gray: np.ndarray) -> np.ndarray:
    """Soft ink map (uint8, ink high) of dark ink on light paper, relative to a median paper."""
    paper = _paper(gray)
    missing = cv2.subtract(paper, cv2.GaussianBlur(gray, (3, 3), 0))
    return cv2.divide(missing, np.maximum(paper, MIN_INK).astype(np.uint8), scale=255)


def grain(gray: np.ndarray) -> float:
    """The paper's grain (sensor noise, texture) in ink-map units: a robust deviation of each pixel
    from its 3x3 median, relative to the paper's brightness."""
    deviation = cv2.absdiff(gray, cv2.medianBlur(gray, 3))
    return 1.4826 * quantile(deviation[::2, ::2], 0.5) * 255 / max(quantile(gray[::2, ::2], 0.9), MIN_INK)


def _mask(ink: np.ndarray, grain: float) -> np.ndarray:
    threshold, _ = cv2.threshold(ink, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    threshold = max(float(threshold), MIN_INK, GRAIN_FACTOR * grain)
    strong = (ink > threshold).astype(np.uint8) * 255
    # Faint ink is only what stands out at the pen's scale (a top-hat a few pen widths across): a
    # shadow's broad penumbra is as dark as a pencil line but is no line.
    pen = measure_stroke(strong // 255) if cv2.countNonZero(strong) else 1.0
    size = 2 * max(2, round(2 * pen)) + 1
    lines = cv2.morphologyEx(ink, cv2.MORPH_TOPHAT, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    weak = ((ink > 0.5 * threshold) & (lines > 0.5 * threshold)).astype(np.uint8) * 255
    # Hysteresis, grown from the sure ink through the faint ink by at most GROW_SHARE of the photo's
    # long side: a stroke whose pressure fades (a ballpoint's tail, a pencil's light upstroke) is
    # kept whole, but a faint pattern touching the digit (a cheque's guilloche) is not followed far.
    kept, kernel = strong, np.ones((3, 3), np.uint8)
    for _ in range(max(2, round(GROW_SHARE * max(ink.shape)))):
        grown: np.ndarray = cv2.bitwise_and(cv2.dilate(kept, kernel), weak)
        if np.array_equal(grown, kept):
            break
        kept = grown
    return kept


def without_long_lines(mask: np.ndarray) -> np.ndarray:
    """The mask less straight horizontal lines longer than LINE_SHARE of the photo's width and than
    its height (a cheque's baseline, an underline, a ruled line), which would join the digits they
    touch; no digit's stroke is that long (the photo is at least as tall as its digits)."""
    length = max(15, round(LINE_SHARE * mask.shape[1]), round(LINE_OVER_HEIGHT * mask.shape[0]))
    lines = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (length, 1)))
    if not cv2.countNonZero(lines):
        return mask
    return cv2.subtract(mask, cv2.dilate(lines, np.ones((3, 1), np.uint8)))


def _solid(group: Group) -> bool:
    """Fills most of its box: with the frame padded, a shadow or the desk cut by the frame, which
    no longer touches the frame (a digit, even in marker, leaves most of its box paper)."""
    return group.area > MAX_FILL * group.width * group.height


def dark_ink(gray: np.ndarray) -> tuple[np.ndarray, bool]:
    """The photo as dark ink on light paper, and whether it had to be inverted for that."""
    # Light ink on a dark board: the board is most of the photo, so the photo is dark overall (the
    # sparse-ink test alone takes a light band beside a shadow on blank paper for chalk).
    inverted = polarity_inverted(gray) and quantile(gray[::2, ::2], 0.5) < 128
    return (255 - gray if inverted else gray), inverted


def pad_margin(shape: tuple[int, ...]) -> int:
    """How much paper a look pads around a tight crop, so that a digit cut by the frame is no edge."""
    return 2 + round(0.03 * max(shape))


def plain_segmentation(gray: np.ndarray, *, pad: bool) -> Segmentation:
    """The digits of the main row by one global threshold; `pad` surrounds the photo with paper
    first (for tight crops, whose digits touch the frame)."""
    gray, inverted = dark_ink(gray)
    paper_grain = grain(gray)  # before padding: the flat padding has none
    margin = pad_margin(gray.shape) if pad else 0
    if margin:
        border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
        gray = cv2.copyMakeBorder(gray, margin, margin, margin, margin, cv2.BORDER_CONSTANT,
                                  value=int(np.median(border)))
    ink = plain_ink_map(gray)
    return row_of_digits(gray, ink, without_long_lines(_mask(ink, paper_grain)), inverted=inverted, margin=margin)


def row_of_digits(gray: np.ndarray, ink: np.ndarray, mask: np.ndarray, *, inverted: bool,
                  margin: int = 0) -> Segmentation:
    """The digits of the main row of an ink mask (dark-ink `gray`, its soft `ink` map, all the same
    size; `margin`: paper padded around the photo, taken off the regions again)."""
    height, width = gray.shape
    labels, groups = components(mask)
    regions: list[DigitRegion] = []
    if groups:
        tallest = max(g.height for g in groups)
        shortest = max(MIN_DIGIT_HEIGHT, MIN_HEIGHT_SHARE * tallest, MIN_HEIGHT_OF_PHOTO * max(height, width))
        groups = [g for g in groups if g.height >= shortest]
        groups = [g for g in groups if not is_blob(g, labels) and not (margin and _solid(g))]
        groups = drop_shadow_tips(split_touching(merge_pieces(groups), labels), labels, ink, gray)
    for group in best_row(groups) if groups else []:
        x0, y0 = max(group.x0, margin), max(group.y0, margin)
        x1, y1 = min(group.x1, width - margin), min(group.y1, height - margin)
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        own = own_mask(labels, group)[y0 - group.y0: y1 - group.y0, x0 - group.x0: x1 - group.x0]
        regions.append(DigitRegion((x0 - margin, y0 - margin, x1 - x0, y1 - y0),
                                   cv2.dilate(own, np.ones((3, 3), np.uint8)), measure_stroke(own)))
    inner = (slice(margin, height - margin), slice(margin, width - margin))
    kept = np.zeros((height - 2 * margin, width - 2 * margin), np.uint8)
    for region in regions:
        x, y, w, h = region.box
        kept[y: y + h, x: x + w] |= region.mask * 255
    return Segmentation(np.ascontiguousarray(ink[inner]), kept, regions, inverted)
