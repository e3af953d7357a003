"""Segmentation failure modes seen on simulated phone photos, each rendered here in a small photo:
digits written on bold paper lines, and the other cases core.vision.segment/core.vision.grouping guard against."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from core.vision.grouping import Group, drop_shadow_tips
from core.vision.paper_lines import line_fragment
from core.vision.preprocess import preprocess
from tests.core.vision.test_preprocess import encode, render


def _bold_lines(rgb: np.ndarray, spacing: int, colour: int, width: int, vertical: bool) -> np.ndarray:
    """Draw printed lines (across the whole frame, slightly slanted) *under* the writing."""
    height, frame = rgb.shape[:2]
    paper = np.full_like(rgb, 255)
    for y in range(spacing // 2, height, spacing):
        cv2.line(paper, (0, y), (frame, y + frame // 40), (colour,) * 3, width, cv2.LINE_AA)
    if vertical:
        for x in range(spacing // 3, frame, spacing):
            cv2.line(paper, (x, 0), (x - height // 40, height), (colour,) * 3, width, cv2.LINE_AA)
    # Multiply: ink and lines both darken the paper, as on a real sheet.
    return (rgb.astype(np.float32) * paper.astype(np.float32) / 255).astype(np.uint8)


@pytest.mark.parametrize("vertical", [False, True], ids=["ruled", "squared"])
@pytest.mark.parametrize(("ink", "line"), [((40, 40, 45), 140), ((110, 110, 115), 180)], ids=["pen", "pencil"])
def test_digit_written_on_a_bold_line_is_found(digits, vertical: bool, ink: tuple[int, int, int], line: int) -> None:
    # The line crosses the digit and runs to the frame: digit and lines are one component,
    # which must not be dropped as a paper line or the paper's edge.
    images, _ = digits
    rgb = render([images[0]], size=(480, 360), digit_height=110, ink=ink)
    lined = _bold_lines(rgb, spacing=180, colour=line, width=4, vertical=vertical)
    result = preprocess(encode(lined))
    assert result.status == "ok" and len(result.digits) == 1
    height = result.digits[0].box[3]
    assert height > 0.8 * 110 * max(result.gray.shape) / 480  # type: ignore[union-attr]


def test_row_on_a_bold_ruled_line_keeps_every_digit(digits) -> None:
    images, _ = digits
    row = [images[i] for i in (1, 2, 3, 4)]
    rgb = render(row, size=(640, 360), digit_height=80, ink=(100, 100, 110))
    result = preprocess(encode(_bold_lines(rgb, spacing=180, colour=175, width=4, vertical=False)))
    assert len(result.digits) == 4


def _bold(rgb_size: tuple[int, int], digit: np.ndarray, height: int, pen: int) -> np.ndarray:
    """A marker-written digit: the MNIST strokes thickened to `pen` pixels, dark grey on paper."""
    width, frame_h = rgb_size
    alpha = np.zeros((frame_h, width), np.float32)
    ys, xs = np.nonzero(digit > 30)
    crop = digit[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1].astype(np.float32) / 255
    scaled = cv2.resize(crop, (max(2, round(crop.shape[1] * height / crop.shape[0])), height))
    strokes = cv2.dilate((scaled > 0.5).astype(np.float32), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (pen, pen)))
    y, x = (frame_h - strokes.shape[0]) // 2, (width - strokes.shape[1]) // 2
    alpha[y: y + strokes.shape[0], x: x + strokes.shape[1]] = cv2.GaussianBlur(strokes, (0, 0), 1.5)
    paper = np.full((frame_h, width, 3), 235, np.float32) * (1 - 0.3 * np.linspace(0, 1, width))[None, :, None]
    image = paper * (1 - alpha[..., None]) + 60 * alpha[..., None]
    rng = np.random.default_rng(0)
    for _ in range(40):  # fibres and dirt of recycled paper
        cv2.circle(image, (int(rng.integers(0, width)), int(rng.integers(0, frame_h))), 2, (150, 150, 150), -1)
    return np.clip(image + rng.normal(0, 2, image.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_bold_digit_filling_the_photo_is_found_whole(digits, index: int) -> None:
    # Strokes a fifth of the digit's height, the digit 70% of the photo's: the paper estimate
    # must be wider than the strokes, or their middles pass for paper and only outlines remain.
    images, _ = digits
    result = preprocess(encode(_bold((400, 300), images[index], 210, 32)))
    assert result.status == "ok" and len(result.digits) == 1
    assert result.digits[0].box[3] >= 0.9 * 210 * max(result.gray.shape) / 400  # type: ignore[union-attr]


def test_darker_stretch_of_a_paper_line_is_not_a_one() -> None:
    # A printed line about as dark as the writing, broken by the ink threshold into stretches:
    # each is a thin upright piece like a "1", but faint ink goes on along it beyond both ends;
    # beyond the ends of a written "1" there is paper.
    ink = np.zeros((200, 200), np.uint8)
    ink[:, 40:44] = 55  # the line, top to bottom
    ink[60:140, 40:44] = 70  # the stretch that passed the threshold
    ink[60:140, 120:125] = 150  # a written "1"
    labels = np.zeros((200, 200), np.int32)
    labels[60:140, 40:44], labels[60:140, 120:125] = 1, 2
    stretch, one = Group(40, 60, 44, 140, [1], 320), Group(120, 60, 125, 140, [2], 400)
    assert line_fragment(stretch, labels, ink)
    assert not line_fragment(one, labels, ink)
    ink[150:190, 150:154] = 150  # another digit below and beside it, off its axis: still a "1"
    assert not line_fragment(one, labels, ink)



@pytest.mark.parametrize("noise", [12.0, 18.0, 25.0])
def test_grainy_blank_paper_is_still_no_digit(noise: float) -> None:
    for seed in range(3):
        result = preprocess(encode(render([], size=(200, 110), noise=noise, shadow=True, seed=seed)))
        assert result.status == "no_digit"


def _pen_row(digit_images: list[np.ndarray], pens: list[int], height: int = 60) -> np.ndarray:
    """A row of digits each written with its own pen width (1 = a hairline), dark on paper."""
    alpha: np.ndarray = np.zeros((200, 480), np.float32)
    x = 60
    for digit, pen in zip(digit_images, pens, strict=True):
        ys, xs = np.nonzero(digit > 30)
        crop = digit[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1].astype(np.float32) / 255
        scaled = cv2.resize(crop, (max(2, round(crop.shape[1] * height / crop.shape[0])), height))
        strokes = cv2.erode((scaled > 0.5).astype(np.float32), np.ones((3, 3)))
        if pen > 1:
            strokes = cv2.dilate(strokes, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (pen, pen)))
        top = (200 - height) // 2
        alpha[top: top + height, x: x + strokes.shape[1]] = strokes
        x += strokes.shape[1] + 25
    alpha = cv2.GaussianBlur(alpha, (0, 0), 0.8)
    image = np.full((200, 480, 3), 235, np.float32) * (1 - alpha[..., None]) + 50 * alpha[..., None]
    return np.clip(image + np.random.default_rng(0).normal(0, 2, image.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("pens", [[9, 1, 9], [11, 1, 11], [9, 3, 9]])
def test_digit_written_thinner_than_its_neighbours_is_kept(digits, pens: list[int]) -> None:
    # Opening away what is thinner than the pen removes leftovers of paper lines, not a digit
    # written with less pressure than the others.
    images, _ = digits
    for first in (0, 3, 6):
        result = preprocess(encode(_pen_row([images[first + k] for k in range(3)], pens)))
        assert len(result.digits) == 3


def _faint_row(digit_images: list[np.ndarray], strengths: list[float], height: int = 60) -> np.ndarray:
    """Blue ink digits in a row, each as dark as its `strength` (1 = full pressure), blurred."""
    from tests.core.vision.test_preprocess import _ink

    width, frame_h = 520, 220
    image = np.full((frame_h, width, 3), (240, 236, 225), np.float32)
    x = 50
    for digit, strength in zip(digit_images, strengths, strict=True):
        alpha = _ink(digit, height)[..., None] * strength
        top = (frame_h - height) // 2
        region = image[top: top + height, x: x + alpha.shape[1]]
        region[:] = region * (1 - alpha) + np.array((40, 45, 120), np.float32) * alpha
        x += alpha.shape[1] + 22
    blurred = cv2.GaussianBlur(image, (0, 0), 1.2)
    image = blurred * (1 - 0.3 * np.linspace(0, 1, width, dtype=np.float32))[None, :, None]
    return np.clip(image + np.random.default_rng(0).normal(0, 3, image.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("strengths", [[1, 1, 0.3, 1, 1], [1, 0.35, 1, 1, 1], [1, 1, 1, 1, 0.3]])
def test_faint_digit_in_a_row_is_kept(digits, strengths: list[float]) -> None:
    # The ink threshold follows the darkest writing; a digit written with little pressure fell
    # below it and went missing from the row.
    images, _ = digits
    for first in (0, 5, 10):
        result = preprocess(encode(_faint_row([images[first + k] for k in range(5)], strengths)))
        assert len(result.digits) == 5


def _small_grainy_row(digit_images: list[np.ndarray], strengths: list[float], noise: float) -> np.ndarray:
    """A 150x72 photo of a row of dark digits, each as dark as its strength, with sensor noise."""
    from tests.core.vision.test_preprocess import _ink

    image: np.ndarray = np.full((72, 150, 3), (236, 232, 222), np.float32)
    x = 10
    for digit, strength in zip(digit_images, strengths, strict=True):
        alpha = _ink(digit, 32)[..., None] * strength
        region = image[20:52, x: x + alpha.shape[1]]
        region[:] = region * (1 - alpha) + np.array((30, 30, 35), np.float32) * alpha
        x += alpha.shape[1] + 10
    image = cv2.GaussianBlur(image, (0, 0), 0.7)
    return np.clip(image + np.random.default_rng(0).normal(0, noise, image.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("noise", [12.0, 16.0])
@pytest.mark.parametrize("strengths", [[1, 0.5, 1], [1, 1, 0.45]])
def test_faint_digit_in_a_small_grainy_row_is_kept(digits, noise: float, strengths: list[float]) -> None:
    # In a small grainy photo the noise term of the ink threshold rises above a lighter digit;
    # along the row found, the second look uses half of it.
    images, _ = digits
    for first in (0, 3, 6, 9):
        result = preprocess(encode(_small_grainy_row([images[first + k] for k in range(3)], strengths, noise),
                                   quality=80))
        assert len(result.digits) == 3


def test_bold_digit_across_a_deep_shadow_edge_is_not_a_shadow_tip() -> None:
    # A bold "0" written across the edge of a deep shadow: the shadow goes on beyond it, nearly
    # as dark as its ink, as beyond the narrow end of a shadow, but a ring is no wedge (its
    # solidity, about 0.65, is well below a shadow tip's).
    gray = np.full((200, 300), 220, np.uint8)
    gray[:, :150] = 112
    ring, bar = np.zeros((200, 300), np.uint8), np.zeros((200, 300), np.uint8)
    cv2.circle(ring, (150, 100), 22, 1, 10)
    cv2.line(bar, (240, 70), (240, 130), 1, 10)  # a darker "1" beside it
    gray[ring > 0], gray[bar > 0] = 100, 60
    labels = (ring + 2 * bar).astype(np.int32)
    ink = np.where(labels > 0, (220 - gray.astype(np.int32)) * 255 // 220, 0).astype(np.uint8)
    zero, one = Group(122, 72, 179, 129, [1], int(ring.sum())), Group(235, 65, 246, 136, [2], int(bar.sum()))
    assert [g.labels for g in drop_shadow_tips([zero, one], labels, ink, gray)] == [[1], [2]]


@pytest.mark.parametrize("gap", [12, 16])
@pytest.mark.parametrize("width", [50, 75])
def test_zero_broken_at_top_and_bottom_stays_one_digit(gap: int, width: int) -> None:
    # The pen skipped at the top and bottom of a "0": two arcs side by side, "(" and ")".
    image = np.full((240, 320, 3), 235, np.uint8)
    for start, end in ((90 + gap, 270 - gap), (-90 + gap, 90 - gap)):
        cv2.ellipse(image, (160, 120), (width // 2, 45), 0, start, end, (40, 40, 45), 7, cv2.LINE_AA)
    result = preprocess(encode(image))
    assert result.status == "ok" and len(result.digits) == 1
    assert result.digits[0].box[2] >= width * max(result.gray.shape) / 320  # type: ignore[union-attr]
