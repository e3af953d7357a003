"""Photo bytes -> MNIST-style 28x28 digit images, left to right.

Decoding is guarded and fast: the size is read from the header first (decompression bombs are
refused before any pixel is decoded), large JPEGs are decoded at 1/2, 1/4 or 1/8 size by libjpeg
itself, and the EXIF orientation is applied here explicitly (independent of the OpenCV version).
Segmentation lives in core.vision.segment; this module turns each found digit into what MNIST looks
like: fitted into a 20x20 box keeping the aspect ratio, centred by centre of mass in 28x28,
white on black, with anti-aliased grey levels taken from a soft ink map rather than a hard mask.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

from core.vision.ink_net import ink_finder, learned_segmentation
from core.vision.plain_ink import plain_segmentation
from core.vision.segment import DigitRegion, Segmentation, find_digits

MAX_PIXELS = 50_000_000
MAX_BYTES = 30 * 1024 * 1024
MIN_SIDE = 5  # pixels; smaller images cannot show a digit
# Segmentation runs on an image whose long side is at most this many pixels.
WORK_LONG_SIDE = 512
# Smaller images (scans, crops, thumbnails) are upscaled to this long side first: the ink
# detection needs a few pixels of paper around strokes a few pixels wide.
MIN_WORK_LONG_SIDE = 160
# Ink at least this strong (of 255) in a look's ink map counts for unread_ink.
MIN_CLEAR_INK = 60
# Images whose long side is under this are taken for tight crops or small scans, whose digits may
# touch the frame: the plain look then also runs on the photo padded with paper.
TIGHT_LONG_SIDE = 128
SMALL_LONG_SIDE = 256
# JPEGs are decoded at the smallest libjpeg scale whose long side is still at least this.
MIN_DECODED_LONG_SIDE = 400
STATUSES = ("ok", "no_digit", "not_an_image", "too_large", "too_many_digits")


@dataclass
class DigitCrop:
    image: np.ndarray  # (28, 28) uint8, white digit on black, MNIST-style
    box: tuple[int, int, int, int]  # x, y, w, h in the decoded (possibly downscaled) image


@dataclass
class Candidate:
    """One segmentation's digits; the classifier picks among a photo's candidates."""

    # "segment" (core.vision.segment), "plain", "plain-padded" (core.vision.plain_ink), "learned" (core.vision.ink_net)
    look: str
    digits: list[DigitCrop]
    binary: np.ndarray  # the ink mask the digits were found in (same size as gray)
    inverted: bool
    # What the digits were cut from, so that a region can be cut again (core.vision.touching): the
    # look's ink map, its regions (one per digit) and the scale from the look's image to gray.
    ink: np.ndarray | None = None
    regions: list[DigitRegion] = field(default_factory=list)
    scale: float = 1.0

    def crops(self, regions: list[DigitRegion]) -> list[DigitCrop]:
        """MNIST-style crops of regions of this look's ink map, boxes in gray's pixels."""
        assert self.ink is not None
        return [DigitCrop(mnist_crop(self.ink, r), _scaled_box(r.box, self.scale)) for r in regions]


@dataclass
class Preprocessed:
    status: str  # one of STATUSES
    digits: list[DigitCrop] = field(default_factory=list)  # left to right; empty unless "ok"
    gray: np.ndarray | None = None  # the decoded, upright, downscaled grey image
    binary: np.ndarray | None = None  # the ink mask the digits were found in (same size as gray)
    inverted: bool = False  # True when the photo was light ink on a dark background
    # Every look that found digits, best first by default; `digits` is the chosen one's.
    candidates: list[Candidate] = field(default_factory=list)
    tight: bool = False  # a small image: a tight crop or scan (see TIGHT_LONG_SIDE)
    small: bool = False  # an image under SMALL_LONG_SIDE: a scan or a crop, maybe tight
    chosen: int = 0
    max_digits: int = 12
    looked_again: bool = False  # whether the plain looks have run (see look_again)
    looked_learned: bool = False  # whether the learned look has run (see look_learned)
    unread_ink: float = 0.0  # of core.vision.segment's look (see unread_ink)

    def add(self, look: str, found: Segmentation) -> None:
        """Add a look's digits as a candidate (when it found some, and not too many); a look made
        at another resolution than `gray` has its boxes and mask brought to gray's."""
        if not found.regions:
            return
        if len(found.regions) > self.max_digits:
            if not self.candidates:
                self.status = "too_many_digits"
            return
        binary, scale = found.mask, 1.0
        if self.gray is not None and binary.shape != self.gray.shape:
            scale = self.gray.shape[1] / binary.shape[1]
            binary = cv2.resize(binary, self.gray.shape[::-1], interpolation=cv2.INTER_NEAREST)
        candidate = Candidate(look, [], binary, found.inverted, found.ink, list(found.regions), scale)
        candidate.digits = candidate.crops(candidate.regions)
        self.candidates.append(candidate)
        if len(self.candidates) == 1:
            self.status = "ok"
            self.choose(0)

    def choose(self, index: int) -> None:
        """Make candidate `index` the reading."""
        candidate = self.candidates[index]
        self.chosen, self.digits = index, candidate.digits
        self.binary, self.inverted = candidate.binary, candidate.inverted

    @property
    def images(self) -> np.ndarray:
        """The digits as one (N, 28, 28) uint8 array, ready for batched classification."""
        return np.stack([d.image for d in self.digits]) if self.digits else np.zeros((0, 28, 28), np.uint8)


def _scaled_box(box: tuple[int, int, int, int], scale: float) -> tuple[int, int, int, int]:
    if scale == 1.0:
        return box
    x, y, w, h = box
    return round(x * scale), round(y * scale), max(1, round(w * scale)), max(1, round(h * scale))


@dataclass(frozen=True)
class _Header:
    width: int
    height: int
    fmt: str
    orientation: int


def _read_header(data: bytes) -> _Header | str:
    """Image size, format and EXIF orientation without decoding pixels, or a failure status."""
    if len(data) > MAX_BYTES:
        return "too_large"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image = Image.open(io.BytesIO(data))
            width, height = image.size
        except Image.DecompressionBombError:
            return "too_large"
        except Exception:
            return "not_an_image"
        orientation = 1
        # Pillow decodes a whole PNG to look for EXIF stored after the pixels; only EXIF found
        # while reading the header counts for PNG.
        if image.format != "PNG" or "exif" in image.info:
            try:
                orientation = int(image.getexif().get(0x0112, 1))
            except Exception:
                orientation = 1
    if width < 1 or height < 1:
        return "not_an_image"
    if width * height > MAX_PIXELS:
        return "too_large"
    return _Header(width, height, str(image.format), orientation if 1 <= orientation <= 8 else 1)


def reduction_factor(width: int, height: int) -> int:
    """The libjpeg scale-down (1, 2, 4 or 8) that keeps the long side >= MIN_DECODED_LONG_SIDE."""
    factor = 1
    while factor < 8 and max(width, height) / (factor * 2) >= MIN_DECODED_LONG_SIDE:
        factor *= 2
    return factor


_REDUCED_FLAGS = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
                  4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}


def _jpeg_truncated(data: bytes) -> bool:
    # The last scan (SOS, FFDA) must be followed by the end-of-image marker (FFD9); an embedded
    # EXIF thumbnail's EOI sits before the main image's scans and does not count. Inside scan
    # data FF is never followed by D9, so an EOI at the very end settles it without a search.
    if data.endswith(b"\xff\xd9"):
        return False
    return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")


def _apply_orientation(gray: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels upright according to the EXIF orientation tag (1..8)."""
    transforms = {
        2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
        5: lambda a: a.T, 6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].T,
        8: lambda a: np.rot90(a, 1),
    }
    transform = transforms.get(orientation)
    return np.ascontiguousarray(transform(gray)) if transform else gray


def decode_gray(data: bytes) -> tuple[np.ndarray | None, str]:
    """Upright grey image with its long side at most WORK_LONG_SIDE, or (None, failure status)."""
    gray, status, _ = _decode(data)
    return gray, status


def decode_working(data: bytes) -> np.ndarray | None:
    """The grey image the plain and learned looks work on (decode_gray, small images upscaled)."""
    gray, _ = decode_gray(data)
    return None if gray is None or min(gray.shape) < MIN_SIDE else _upscale_small(gray)


def _decode(data: bytes) -> tuple[np.ndarray | None, str, int]:
    """decode_gray, and the long side of the image as stored (0 when it is not one)."""
    header = _read_header(data)
    if isinstance(header, str):
        return None, header, 0
    source_long_side = max(header.width, header.height)
    buffer = np.frombuffer(data, np.uint8)
    gray: np.ndarray | None = None
    if header.fmt == "JPEG":
        if _jpeg_truncated(data):
            return None, "not_an_image", 0
        factor = reduction_factor(header.width, header.height)
        gray = cv2.imdecode(buffer, _REDUCED_FLAGS[factor] | cv2.IMREAD_IGNORE_ORIENTATION)
    elif header.fmt == "PNG":
        # For PNG the reduced flags take effect on the size but not on the decoding time (the
        # whole image must be inflated); they save the later resize of a large image.
        factor = reduction_factor(header.width, header.height)
        gray = cv2.imdecode(buffer, _REDUCED_FLAGS[factor] | cv2.IMREAD_IGNORE_ORIENTATION)
    else:
        gray = cv2.imdecode(buffer, cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION)
    if gray is None:  # a format OpenCV was built without (GIF, some TIFFs): let Pillow decode it
        gray = _decode_with_pillow(data)
        if gray is None:
            return None, "not_an_image", 0
    gray = _apply_orientation(gray, header.orientation)
    long_side = max(gray.shape)
    if long_side > WORK_LONG_SIDE:
        scale = WORK_LONG_SIDE / long_side
        size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
        if scale >= 0.5:
            # Less than halving (most JPEGs after the libjpeg reduction): a light blur and
            # bilinear sampling read the same as INTER_AREA, which costs 0.5 ms more at such
            # fractional scales.
            sigma = 0.6 * (1 / scale - 1) + 0.3
            gray = cv2.resize(cv2.GaussianBlur(gray, (3, 3), sigma), size, interpolation=cv2.INTER_LINEAR)
        else:
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    return gray, "ok", source_long_side


def _upscale_small(gray: np.ndarray) -> np.ndarray:
    """A small image brought to MIN_WORK_LONG_SIDE (see there); others as they are."""
    long_side = max(gray.shape)
    if long_side >= MIN_WORK_LONG_SIDE:
        return gray
    scale = MIN_WORK_LONG_SIDE / long_side
    size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
    return cv2.resize(gray, size, interpolation=cv2.INTER_CUBIC)


def _decode_with_pillow(data: bytes) -> np.ndarray | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
            image.draft("L", (WORK_LONG_SIDE, WORK_LONG_SIDE))
            return np.asarray(image.convert("L"))
    except Exception:
        return None


# MNIST strokes are about 2.2 px wide in the 20 px box (measured on the training set).
_MNIST_STROKE = 2.2


def mnist_crop(ink: np.ndarray, region: DigitRegion) -> np.ndarray:
    """A soft ink map region (uint8, ink high) -> a 28x28 uint8 digit like MNIST's."""
    x, y, w, h = region.box
    soft = ink[y: y + h, x: x + w].astype(np.float32) * region.mask
    values = soft[region.mask > 0]
    peak = float(np.partition(values, int(0.9 * (len(values) - 1)))[int(0.9 * (len(values) - 1))]) if len(values) else 0
    soft = np.minimum(soft * (1 / max(peak, 1.0)), 1)
    # Bring the stroke width to MNIST's: a fine pen on a large digit would otherwise shrink to a
    # faint hairline at 20 px, and a marker would fill the box.
    wanted = _MNIST_STROKE * max(w, h) / 20
    if region.stroke_width < 0.6 * wanted:
        grow = max(1, round((wanted - region.stroke_width) / 2))
        soft = cv2.dilate(soft, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    elif region.stroke_width > 1.8 * wanted:
        shrink = max(1, round((region.stroke_width - wanted) / 3))
        soft = cv2.erode(soft, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * shrink + 1, 2 * shrink + 1)))
    scale = 20 / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(soft, size, interpolation=interpolation)
    small = np.maximum(small, 0) * (255 / max(float(small.max()), 1e-3))
    moments = cv2.moments(small)
    if not moments["m00"] > 0:  # no ink left (or a NaN from a damaged photo)
        return np.zeros((28, 28), np.uint8)
    cy, cx = moments["m01"] / moments["m00"], moments["m10"] / moments["m00"]
    top = min(max(round(14 - cy), 0), 28 - size[1])
    left = min(max(round(14 - cx), 0), 28 - size[0])
    canvas = np.zeros((28, 28), np.uint8)
    canvas[top: top + size[1], left: left + size[0]] = np.round(small).astype(np.uint8)
    return canvas


def preprocess(data: bytes, *, max_digits: int = 12, every_look: bool = False) -> Preprocessed:
    """Photo bytes -> digits left to right. Never raises on bad input; see Preprocessed.status.

    Each look at the photo that finds digits gives a candidate; `digits` holds the first one's
    (core.vision.segment's when it found any). The plain looks run when core.vision.segment found nothing, on
    tight crops, with `every_look`, or later through `look_again`; the learned look when no other
    found anything, with `every_look`, or later through `look_learned`. core.recognize lets the
    classifier choose.
    """
    try:
        gray, status, source_long_side = _decode(bytes(data))
    except Exception:  # a decoder bug on hostile input must not take the bot down
        return Preprocessed("not_an_image")
    if gray is None:
        return Preprocessed(status)
    if min(gray.shape) < MIN_SIDE:  # no digit fits (and OpenCV takes a 1x1 array for a scalar)
        return Preprocessed("no_digit", gray=gray)
    # core.vision.segment was tuned at the decoded size; the plain looks see small images upscaled.
    found = find_digits(gray)
    upscaled = _upscale_small(gray)
    binary = found.mask if upscaled is gray else cv2.resize(found.mask, upscaled.shape[::-1],
                                                              interpolation=cv2.INTER_NEAREST)
    result = Preprocessed("no_digit", gray=upscaled, binary=binary, inverted=found.inverted,
                          tight=source_long_side < TIGHT_LONG_SIDE, small=source_long_side < SMALL_LONG_SIDE,
                          max_digits=max_digits)
    result.add("segment", found)
    result.unread_ink = unread_ink(found)
    if every_look or result.tight or not result.candidates:
        look_again(result)
    if every_look or not result.candidates:
        look_learned(result)
    return result


def unread_ink(found: Segmentation) -> float:
    """The share of the ink a look's ink map shows clearly that its digits leave out (paper
    lines, or digits it missed): a cheap sign that another look may read more."""
    strong = found.ink > max(MIN_CLEAR_INK, 0.5 * float(found.ink.max()))
    total = int(np.count_nonzero(strong))
    if total == 0:
        return 0.0
    return 1 - int(np.count_nonzero(strong & (found.mask > 0))) / total


def look_again(result: Preprocessed) -> None:
    """Add the plain looks' candidates (core.vision.plain_ink) to a photo core.vision.segment has looked at."""
    if result.gray is None or result.looked_again:
        return
    result.looked_again = True
    result.add("plain", plain_segmentation(result.gray, pad=False))
    # Padding takes the photo for a tight crop; on a small photo that is not quite one that reading
    # may compete with the others, but not stand alone (a shadow or the desk at the frame would pass
    # for a digit); on larger photos the desk and paper edges at the frame would win too often.
    if result.tight or (result.candidates and result.small):
        result.add("plain-padded", plain_segmentation(result.gray, pad=True))


def look_learned(result: Preprocessed) -> bool:
    """Add the learned look's candidate (core.vision.ink_net); whether it found digits. It costs more than
    the others, so core.recognize asks for it only where their readings are unsure."""
    finder = ink_finder()
    if result.gray is None or result.looked_learned or finder is None:
        return False
    result.looked_learned = True
    before = len(result.candidates)
    result.add("learned", learned_segmentation(result.gray, finder, pad=result.small))
    return len(result.candidates) > before
