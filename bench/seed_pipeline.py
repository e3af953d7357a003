"""A faithful re-implementation of the seed's identify.py preprocessing, as the baseline.

The seed reads the photo in grey, decides the polarity from the mean of the border pixels
(a light border means dark ink, so it inverts), applies one fixed threshold at 127, takes one
bounding box over all ink pixels, resizes that box to 20x20 and centres it in 28x28.
It always yields exactly one digit per photo (or none if no pixel passes the threshold).
"""

from __future__ import annotations

import cv2
import numpy as np


def seed_preprocess(data: bytes) -> list[np.ndarray]:
    """Photo bytes -> [one 28x28 uint8 digit] or [] (unreadable image or no ink)."""
    gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        return []
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if border.mean() > 127:
        gray = 255 - gray
    _, binary = cv2.threshold(gray, 127, 255, cv2.THRESH_BINARY)
    points = cv2.findNonZero(binary)
    if points is None:
        return []
    x, y, w, h = cv2.boundingRect(points)
    crop = binary[y: y + h, x: x + w]
    scale = 20 / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    canvas = np.zeros((28, 28), np.uint8)
    top, left = (28 - size[1]) // 2, (28 - size[0]) // 2
    canvas[top: top + size[1], left: left + size[0]] = small
    return [canvas]
