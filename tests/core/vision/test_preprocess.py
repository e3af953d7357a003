"""core.vision.preprocess on synthetic photos rendered here: polarity, shadows, paper lines, rows, sizes,
EXIF orientation, reduced decoding, and hostile bytes."""

from __future__ import annotations

import io
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from core.vision.preprocess import (
    MIN_DECODED_LONG_SIDE,
    WORK_LONG_SIDE,
    decode_gray,
    preprocess,
    reduction_factor,
)


def _ink(digit: np.ndarray, height: int) -> np.ndarray:
    ys, xs = np.nonzero(digit > 30)
    crop = digit[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1].astype(np.float32) / 255
    width = max(2, round(crop.shape[1] * height / crop.shape[0]))
    return np.clip((cv2.resize(crop, (width, height), interpolation=cv2.INTER_CUBIC) - 0.3) / 0.3, 0, 1)


def render(digit_images: list[np.ndarray], *, size: tuple[int, int] = (640, 480), digit_height: int = 90,
           dark: bool = False, shadow: bool = False, lines: str = "", ink: tuple[int, int, int] = (40, 50, 150),
           noise: float = 3.0, seed: int = 0) -> np.ndarray:
    """An RGB photo of the digits in a row across the middle."""
    rng = np.random.default_rng(seed)
    width, height = size
    paper = np.full((height, width, 3), (30, 35, 32) if dark else (245, 240, 225), np.float32)
    if lines:
        spacing = digit_height * (1.4 if lines == "ruled" else 0.5)
        for y in np.arange(spacing / 3, height, spacing):
            cv2.line(paper, (0, int(y)), (width, int(y + width * 0.03)), (150, 175, 220), 2, cv2.LINE_AA)
        if lines == "squared":
            for x in np.arange(spacing / 3, width, spacing):
                cv2.line(paper, (int(x), 0), (int(x - height * 0.03), height), (150, 175, 220), 2, cv2.LINE_AA)
    alpha = np.zeros((height, width), np.float32)
    strokes = [_ink(d, digit_height) for d in digit_images]
    gap = digit_height // 4
    x = (width - sum(s.shape[1] for s in strokes) - gap * (len(strokes) - 1)) // 2
    y = (height - digit_height) // 2
    for stroke in strokes:
        alpha[y: y + digit_height, x: x + stroke.shape[1]] = stroke
        x += stroke.shape[1] + gap
    colour = np.array((235, 235, 230) if dark else ink, np.float32)
    image = paper * (1 - alpha[..., None]) + colour * alpha[..., None]
    falloff = 1 - 0.35 * np.linspace(0, 1, width, dtype=np.float32)
    image *= falloff[None, :, None]  # light falls off across the page
    if shadow:  # a soft band of shadow across the middle of the row
        band = np.zeros((height, width), np.float32)
        band[:, width // 3: 2 * width // 3] = 1
        image *= (1 - 0.5 * cv2.GaussianBlur(band, (0, 0), width / 40))[..., None]
    image += np.asarray(rng.normal(0, noise, image.shape), np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def encode(rgb: np.ndarray, fmt: str = "JPEG", orientation: int = 0, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    Image.fromarray(rgb).save(buffer, fmt, quality=quality, exif=exif) if fmt == "JPEG" else \
        Image.fromarray(rgb).save(buffer, fmt, exif=exif)
    return buffer.getvalue()


def assert_mnist_like(image: np.ndarray) -> None:
    assert image.shape == (28, 28) and image.dtype == np.uint8
    ys, xs = np.nonzero(image)
    assert ys.max() - ys.min() + 1 <= 21 and xs.max() - xs.min() + 1 <= 21  # fitted in 20x20 (+1 rounding)
    assert max(ys.max() - ys.min(), xs.max() - xs.min()) + 1 >= 18  # and filling it
    weights = image.astype(np.float64)
    grid_y, grid_x = np.mgrid[0:28, 0:28]
    centre = ((weights * grid_y).sum() / weights.sum(), (weights * grid_x).sum() / weights.sum())
    assert abs(centre[0] - 14) <= 1.0 and abs(centre[1] - 14) <= 1.0
    assert image.max() == 255 and image[0].max() == 0 and image[:, 0].max() == 0  # white on black
    assert len(np.unique(image)) > 20  # anti-aliased grey levels, not a binary mask


@pytest.mark.parametrize("dark", [False, True], ids=["dark-ink", "light-ink-on-board"])
def test_single_digit_both_polarities(digits, dark: bool) -> None:
    result = preprocess(encode(render([digits[0][0]], dark=dark)))
    assert result.status == "ok" and len(result.digits) == 1
    assert result.inverted is dark
    assert_mnist_like(result.digits[0].image)


@pytest.mark.parametrize("lines", ["", "ruled", "squared"])
@pytest.mark.parametrize("shadow", [False, True], ids=["even-light", "shadow"])
def test_row_of_digits_left_to_right(digits, lines: str, shadow: bool) -> None:
    images, _ = digits
    row = [images[i] for i in (1, 2, 3, 4, 5)]
    result = preprocess(encode(render(row, size=(900, 500), digit_height=80, lines=lines, shadow=shadow)))
    assert result.status == "ok" and len(result.digits) == 5
    lefts = [crop.box[0] for crop in result.digits]
    assert lefts == sorted(lefts)
    for crop in result.digits:
        assert_mnist_like(crop.image)


def test_crops_are_read_correctly_by_the_base_model(digits) -> None:
    torch = pytest.importorskip("torch")
    from core.model.network import load_base, normalize

    try:
        model = load_base().build()
    except (FileNotFoundError, ValueError, RuntimeError):
        pytest.skip("no base weights")
    images, labels = digits
    picks = [7, 8, 9, 10, 11, 12]
    result = preprocess(encode(render([images[i] for i in picks], size=(900, 400), digit_height=70,
                                      lines="ruled", shadow=True)))
    with torch.inference_mode():
        read = model(normalize(torch.from_numpy(result.images))).argmax(1).tolist()
    assert read == [int(labels[i]) for i in picks]


@pytest.mark.parametrize("lines", ["", "ruled", "squared"])
def test_blank_paper_is_no_digit(lines: str) -> None:
    result = preprocess(encode(render([], lines=lines, shadow=True)))
    assert result.status == "no_digit" and result.digits == []
    assert result.gray is not None


@pytest.mark.parametrize("darkness", [0.5, 0.65])
@pytest.mark.parametrize("wedge", [[[0, 140], [0, 420], [260, 250]], [[80, 479], [260, 479], [230, 240]],
                                   [[0, 0], [0, 479], [230, 240]]], ids=["left", "bottom", "wide"])
def test_narrow_end_of_a_hard_shadow_is_not_a_digit(digits, darkness: float, wedge: list[list[int]]) -> None:
    plain = render([digits[0][3]])
    shade = np.zeros(plain.shape[:2], np.uint8)
    cv2.fillPoly(shade, [np.array(wedge, np.int32)], 1)  # a hard-edged shadow, its tip near the digit
    shaded = np.clip(plain * (1 - darkness * shade)[..., None], 0, 255).astype(np.uint8)
    result = preprocess(encode(shaded))
    assert result.status == "ok" and len(result.digits) == 1
    assert result.digits[0].box == preprocess(encode(plain)).digits[0].box


def test_specks_are_ignored(digits) -> None:
    rgb = render([digits[0][3]])
    rng = np.random.default_rng(1)
    for _ in range(12):
        x, y = int(rng.integers(10, 630)), int(rng.integers(10, 100))
        cv2.circle(rgb, (x, y), 1, (60, 60, 60), -1)
    result = preprocess(encode(rgb))
    assert len(result.digits) == 1


def test_tiny_image(digits) -> None:
    result = preprocess(encode(render([digits[0][0]], size=(40, 40), digit_height=26, noise=1), fmt="PNG"))
    assert result.status == "ok" and len(result.digits) == 1
    assert_mnist_like(result.digits[0].image)


def test_huge_photo_is_decoded_reduced_and_fast(digits) -> None:
    images, _ = digits
    small = render([images[i] for i in (1, 2, 3)], size=(800, 600), digit_height=120, noise=1)
    data = encode(cv2.resize(small, (4000, 3000), interpolation=cv2.INTER_LINEAR))
    assert reduction_factor(4000, 3000) == 8
    raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8)
    assert raw is not None and raw.shape == (375, 500)  # the libjpeg scale-down really takes effect in imdecode
    start = time.perf_counter()
    result = preprocess(data)
    elapsed = time.perf_counter() - start
    assert result.status == "ok" and len(result.digits) == 3
    assert result.gray is not None and max(result.gray.shape) <= WORK_LONG_SIDE
    assert elapsed < 1.0  # a full-size decode alone would take longer on a busy CI core


def test_huge_png_is_decoded_reduced(digits) -> None:
    images, _ = digits
    small = render([images[i] for i in (1, 2, 3)], size=(800, 600), digit_height=120, noise=1)
    data = encode(cv2.resize(small, (3200, 2400), interpolation=cv2.INTER_LINEAR), fmt="PNG")
    raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_4)
    assert raw is not None and raw.shape == (600, 800)  # the flag takes effect for PNG too (size only)
    result = preprocess(data)
    assert result.status == "ok" and len(result.digits) == 3
    assert result.gray is not None and max(result.gray.shape) <= WORK_LONG_SIDE


def test_reduction_keeps_enough_pixels() -> None:
    assert reduction_factor(300, 200) == 1
    for width, height in [(1000, 800), (2000, 1500), (4032, 3024), (12000, 4000)]:
        factor = reduction_factor(width, height)
        assert max(width, height) / factor >= MIN_DECODED_LONG_SIDE or factor == 8


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(digits, orientation: int) -> None:
    images, _ = digits
    upright = render([images[i] for i in (1, 2, 3)], size=(700, 300), digit_height=90)
    # The camera stores the pixels turned; the tag says how to turn them upright.
    turns = {3: 2, 6: 1, 8: 3}[orientation]
    stored = np.ascontiguousarray(np.rot90(upright, turns))
    expected = preprocess(encode(upright))
    result = preprocess(encode(stored, orientation=orientation))
    assert result.gray is not None and expected.gray is not None
    assert result.gray.shape == expected.gray.shape
    assert len(result.digits) == 3
    for ours, reference in zip(result.digits, expected.digits, strict=True):
        assert np.corrcoef(ours.image.ravel(), reference.image.ravel())[0, 1] > 0.9


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow(orientation: int) -> None:
    pixels = np.arange(12 * 20, dtype=np.uint8).reshape(12, 20)
    data = encode(np.stack([pixels] * 3, axis=-1), fmt="PNG", orientation=orientation)
    gray, status = decode_gray(data)
    reference = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("L"))
    assert status == "ok"
    np.testing.assert_array_equal(gray, reference)


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(8000, 8000), (60000, 60000)])
def test_decompression_bomb_is_refused_before_decoding(size: tuple[int, int]) -> None:
    start = time.perf_counter()
    assert preprocess(_png_header_only(*size)).status == "too_large"
    assert time.perf_counter() - start < 0.5


def test_too_many_digits(digits) -> None:
    images, _ = digits
    rgb = render([images[i] for i in range(20, 28)], size=(1200, 400), digit_height=70)
    assert preprocess(encode(rgb), max_digits=5).status == "too_many_digits"
    assert len(preprocess(encode(rgb)).digits) == 8


@pytest.mark.parametrize("data", [b"", b"hello, this is text", b"\xff\xd8\xff\xe0" + b"\0" * 100,
                                  b"\x89PNG\r\n\x1a\n" + b"\0" * 50, b"GIF89a" + b"\1" * 30])
def test_not_an_image(data: bytes) -> None:
    result = preprocess(data)
    assert result.status == "not_an_image" and result.digits == [] and result.gray is None


def test_truncated_jpeg(digits) -> None:
    data = encode(render([digits[0][0]]))
    assert preprocess(data[: len(data) // 2]).status == "not_an_image"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise(data: bytes) -> None:
    assert preprocess(data).status in {"ok", "no_digit", "not_an_image", "too_large", "too_many_digits"}


_SMALL_JPEG = encode(render([], size=(64, 48)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(_SMALL_JPEG) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_damaged_jpeg_never_raises(edits: list[tuple[int, int]]) -> None:
    data = bytearray(_SMALL_JPEG)
    for position, value in edits:
        data[position] = value
    assert preprocess(bytes(data)).status in {"ok", "no_digit", "not_an_image", "too_large", "too_many_digits"}
