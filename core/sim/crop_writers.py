"""Simulated users for personalisation tests and benchmarks.

Two kinds of "other people's handwriting", both returned as MNIST-style crops (digit fitted in a
20x20 box, centred by mass in 28x28, white on black), i.e. what core.vision.preprocess hands over:

* Semeion writers: one user per Semeion collection round (16x16 binary scans stretched to fill
  their box, a different population and scanner from MNIST's).
* Styled MNIST writers: digits from MNIST train[50000:] (disjoint from the test set and from the
  replay bank) redrawn with one consistent personal style: slant, rotation, width, stroke
  thickness, a crossed 7, a flagged 1 with a foot, a slashed 0, and a phone-photo look (blur,
  grey background, noise). Each sample jitters the style a little.

Users are split into ``dev`` (for tuning) and ``eval`` (only for reporting) sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.model.data import load_mnist, load_semeion

USER_POOL_START = 50_000  # MNIST train indices >= this feed styled users (replay uses the rest)


@dataclass
class SimUser:
    name: str
    images: np.ndarray  # uint8 (N,28,28), in the order the user would label them
    labels: np.ndarray  # int64 (N,)


@dataclass(frozen=True)
class Style:
    shear: float = 0.0  # x += shear * y (rows grow downward): positive leans the top left
    rotate_deg: float = 0.0
    width: float = 1.0  # horizontal stretch before refitting into the 20x20 box
    thickness: int = 0  # >0 dilate, <0 erode (pixels at 28x28)
    crossed_seven: bool = False
    flagged_one: bool = False
    slashed_zero: bool = False
    photo: bool = False  # blur + grey background + noise, as a photographed crop


DEV_STYLES = {
    "dev-slant-cross7": Style(shear=0.7, rotate_deg=-8, thickness=1, crossed_seven=True),
    "dev-back-flag1": Style(shear=-0.45, width=1.3, flagged_one=True, photo=True),
    "dev-wide-thick": Style(width=1.6, thickness=2, rotate_deg=-18, slashed_zero=True),
}
# Fixed before any benchmark run on them; never used for tuning.
EVAL_STYLES = {
    "eval-italic-euro": Style(shear=0.7, rotate_deg=10, flagged_one=True, crossed_seven=True),
    "eval-narrow-photo": Style(width=0.55, shear=-0.5, thickness=1, photo=True, slashed_zero=True),
    "eval-round-marker": Style(width=1.4, thickness=2, rotate_deg=18, crossed_seven=True, photo=True),
}
SEMEION_ROUNDS = {"dev": (0, 1, 2), "eval": (3, 4, 5)}


def fit_to_mnist_box(image: np.ndarray) -> np.ndarray:
    """Any-size grey image (white on black) -> 28x28 uint8: longer side 20 px, centred by mass."""
    ys, xs = np.nonzero(image > 0)
    if len(ys) == 0:
        return np.zeros((28, 28), np.uint8)
    crop = image[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32)
    h, w = crop.shape
    scale = 20.0 / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(crop, (new_w, new_h), interpolation=interpolation)
    canvas: np.ndarray = np.zeros((28, 28), np.float32)
    top, left = (28 - new_h) // 2, (28 - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = small
    moments = cv2.moments(canvas)
    if moments["m00"] > 0:
        dx = 14 - moments["m10"] / moments["m00"]
        dy = 14 - moments["m01"] / moments["m00"]
        canvas = cv2.warpAffine(canvas, np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float32), (28, 28))
    return np.clip(canvas, 0, 255).astype(np.uint8)


def render_semeion(images16: np.ndarray) -> np.ndarray:
    """Semeion 16x16 binary (0/255) -> MNIST-style 28x28 crops."""
    out = []
    for image in images16:
        big = cv2.resize(image.astype(np.float32), (64, 64), interpolation=cv2.INTER_LINEAR)
        out.append(fit_to_mnist_box(cv2.GaussianBlur(big, (5, 5), 1.0)))
    return np.stack(out)


def semeion_users(split: str = "dev", seed: int = 0) -> list[SimUser]:
    images, labels, rounds = load_semeion()
    users = []
    for round_index in SEMEION_ROUNDS[split]:
        member = np.flatnonzero(rounds == round_index)
        order = np.random.default_rng(seed + round_index).permutation(member)
        users.append(SimUser(f"semeion-round{round_index}", render_semeion(images[order]), labels[order]))
    return users


def _stroke_extent(image: np.ndarray, row: int) -> tuple[int, int] | None:
    xs = np.flatnonzero(image[row] > 100)
    return (int(xs.min()), int(xs.max())) if len(xs) else None


def _glyph_changes(image: np.ndarray, label: int, style: Style, rng: np.random.Generator) -> np.ndarray:
    """Draw the user's glyph habits onto a 28x28 MNIST digit (before the geometric style)."""
    out = image.copy()
    ys, xs = np.nonzero(out > 100)
    if len(ys) == 0:
        return out
    top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
    ink = int(rng.integers(200, 256))
    if style.crossed_seven and label == 7:
        row = int(top + (bottom - top) * rng.uniform(0.5, 0.6))
        extent = _stroke_extent(out, row)
        centre = (extent[0] + extent[1]) // 2 if extent else (left + right) // 2
        cv2.line(out, (centre - 4, row), (centre + 4, row + int(rng.integers(-1, 2))), ink, 2)
    if style.flagged_one and label == 1:
        top_extent = _stroke_extent(out, top) or (left, right)
        x_top = (top_extent[0] + top_extent[1]) // 2
        cv2.line(out, (x_top, top), (x_top - 6, top + int(rng.integers(4, 7))), ink, 2)
        bottom_extent = _stroke_extent(out, bottom) or (left, right)
        x_bottom = (bottom_extent[0] + bottom_extent[1]) // 2
        cv2.line(out, (x_bottom - 5, bottom), (x_bottom + 5, bottom), ink, 2)
    if style.slashed_zero and label == 0:
        cv2.line(out, (right + 1, top - 1), (left - 1, bottom + 1), ink, 2)
    return out


def apply_style(image: np.ndarray, label: int, style: Style, rng: np.random.Generator) -> np.ndarray:
    """One MNIST digit redrawn in ``style`` (with a little per-sample jitter), MNIST-style 28x28."""
    glyph = _glyph_changes(image, label, style, rng)
    big = cv2.resize(glyph, (84, 84), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    shear = style.shear + rng.normal(0, 0.05)
    angle = np.deg2rad(style.rotate_deg + rng.normal(0, 3))
    width = style.width * np.exp(rng.normal(0, 0.05))
    cos, sin = np.cos(angle), np.sin(angle)
    linear = np.array([[cos, -sin], [sin, cos]]) @ np.array([[width, shear], [0.0, 1.0]])
    # 84x84 in, 168x168 out with the centre mapped to the centre, so wide styles never clip
    offset = np.array([84.0, 84.0]) - linear @ np.array([42.0, 42.0])
    matrix = np.hstack([linear, offset[:, None]]).astype(np.float32)
    warped = cv2.warpAffine(big, matrix, (168, 168), borderValue=0)
    out = fit_to_mnist_box(warped)
    if style.thickness > 0:
        out = cv2.dilate(out, np.ones((2, 2), np.uint8), iterations=style.thickness)
    elif style.thickness < 0:
        out = cv2.erode(out, np.ones((2, 2), np.uint8), iterations=-style.thickness)
    if style.photo:
        grey = cv2.GaussianBlur(out.astype(np.float32), (3, 3), 0.8)
        grey = 0.8 * grey + rng.uniform(10, 30) + rng.normal(0, 8, grey.shape)
        out = np.clip(grey, 0, 255).astype(np.uint8)
    return out


def styled_user(name: str, style: Style, n: int = 400, seed: int = 0) -> SimUser:
    images, labels = load_mnist(train=True)
    pool = np.arange(USER_POOL_START, len(images))
    rng = np.random.default_rng([seed, *name.encode()])
    chosen = rng.choice(pool, size=n, replace=False)
    source = images[chosen].numpy()
    targets = labels[chosen].numpy().astype(np.int64)
    styled = np.stack([apply_style(img, int(lab), style, rng) for img, lab in zip(source, targets, strict=True)])
    return SimUser(name, styled, targets)


def simulated_users(split: str = "dev", n: int = 400, seed: int = 0) -> list[SimUser]:
    """The ``split`` ("dev" or "eval") users: styled MNIST writers, then Semeion rounds."""
    styles = DEV_STYLES if split == "dev" else EVAL_STYLES
    return [styled_user(name, style, n, seed) for name, style in styles.items()] + semeion_users(split, seed)


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm"}


def _decode_crop(data: bytes) -> tuple[np.ndarray | None, str]:
    """One labelled image -> a 28x28 MNIST-style crop, or None and why not.

    An image that is already 28x28 is taken as a crop (inverted when it is dark ink on a light
    background); anything else goes through core.vision.preprocess, and one of its looks must find exactly
    one digit.
    """
    gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if gray is not None and gray.shape == (28, 28):
        return (255 - gray if gray.mean() > 127 else gray), ""
    from core.vision.preprocess import preprocess

    result = preprocess(data, every_look=True)
    if result.status != "ok":
        return None, result.status.replace("_", " ")
    # The label says one digit: the first look that found exactly one (as core.sim.photo_crops does).
    single = next((c.digits for c in result.candidates if len(c.digits) == 1), None)
    if single is None:
        return None, f"{len(result.digits)} digits in one image"
    return single[0].image, ""


def load_labelled_folder(folder: str | Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """DIR/0 .. DIR/9 of images -> (crops uint8 (N,28,28), labels (N,), skipped files with reasons)."""
    root = Path(folder)
    images, labels, skipped = [], [], []
    for digit in range(10):
        sub = root / str(digit)
        if not sub.is_dir():
            continue
        for path in sorted(sub.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                continue
            try:
                crop, why = _decode_crop(path.read_bytes())
            except OSError as error:
                crop, why = None, f"unreadable ({error.strerror})"
            if crop is None:
                skipped.append(f"{path}: {why}")
            else:
                images.append(crop)
                labels.append(digit)
    stacked = np.stack(images) if images else np.zeros((0, 28, 28), np.uint8)
    return stacked.astype(np.uint8), np.array(labels, dtype=np.int64), skipped
