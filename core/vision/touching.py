"""Touching digits cut apart, the classifier choosing how many there are.

A region much wider than a digit is usually two or three digits that touch (a cheque amount written
in one stroke, "64" run together). It is cut into k pieces at the columns where the least ink
crosses, near equal spacing, for each plausible k; core.recognize classifies every piece and keeps
the k whose pieces it reads best (see choose_split).
"""

from __future__ import annotations

import itertools

import cv2
import numpy as np

from core.vision.grouping import stroke_width
from core.vision.segment import DigitRegion

# A region wider than this share of its height may hold more than one digit ("0" reaches ~0.9).
WIDE = 0.8
# The narrowest share of the height a single digit other than "1" takes, setting the most pieces.
NARROWEST_DIGIT = 0.4
MAX_PIECES = 4


def piece_counts(region: DigitRegion) -> list[int]:
    """How many digits a region might hold, 1 first."""
    _, _, width, height = region.box
    if width <= WIDE * height:
        return [1]
    most = min(MAX_PIECES, max(2, int(width / (NARROWEST_DIGIT * height))))
    return list(range(1, most + 1))


def cut(region: DigitRegion, pieces: int) -> list[DigitRegion]:
    """The region cut into `pieces` at the columns with the least ink near equal spacing."""
    if pieces == 1:
        return [region]
    x, y, width, _ = region.box
    profile = region.mask.sum(axis=0).astype(np.float32)
    profile = cv2.blur(profile.reshape(1, -1), (3, 1)).ravel()
    cuts = [0]
    for k in range(1, pieces):
        centre = round(width * k / pieces)
        reach = max(1, width // (3 * pieces))
        lo, hi = max(cuts[-1] + 2, centre - reach), min(width - 2, centre + reach)
        cuts.append(lo + int(np.argmin(profile[lo:hi])) if hi > lo else centre)
    cuts.append(width)
    result = []
    for left, right in itertools.pairwise(cuts):
        part = region.mask[:, left:right]
        rows = np.flatnonzero(part.any(axis=1))
        if right - left < 2 or len(rows) < 2:
            continue
        top, bottom = int(rows[0]), int(rows[-1]) + 1
        own = np.ascontiguousarray(part[top:bottom])
        result.append(DigitRegion((x + left, y + top, right - left, bottom - top), own, stroke_width(own)))
    return result
