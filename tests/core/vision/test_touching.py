"""Touching digits are cut apart and the classifier chooses how many there are; a reading that
leaves most of the writing unread loses to one that reads it all."""

from __future__ import annotations

import numpy as np
import pytest

from core import recognize
from core.model.network import load_base
from core.recognize import DigitPrediction, Recognizer, choose_candidate
from core.vision.segment import DigitRegion
from core.vision.touching import cut, piece_counts
from tests.core.vision.test_preprocess import _ink, encode


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    return Recognizer(load_base())


def _touching_row(images: list[np.ndarray], overlap: int, height: int = 60) -> np.ndarray:
    """A tight 2:1 scan of digits written so close that each touches the next."""
    inks = [_ink(image, height) for image in images]
    width = sum(i.shape[1] for i in inks) - overlap * (len(inks) - 1) + 16
    alpha = np.zeros((height + 16, width), np.float32)
    x = 8
    for ink in inks:
        region = alpha[8: 8 + height, x: x + ink.shape[1]]
        np.maximum(region, ink, out=region)
        x += ink.shape[1] - overlap
    paper = np.full((*alpha.shape, 3), 230, np.float32)
    rgb = paper * (1 - alpha[..., None]) + np.array((40, 40, 60), np.float32) * alpha[..., None]
    return rgb.clip(0, 255).astype(np.uint8)


def test_a_wide_region_is_cut_where_least_ink_crosses() -> None:
    mask = np.zeros((40, 60), np.uint8)
    mask[:, 2:26] = 1
    mask[:, 34:58] = 1
    mask[18:22, 26:34] = 1  # the stroke joining them
    region = DigitRegion((100, 50, 60, 40), mask, 4.0)
    assert piece_counts(region)[:2] == [1, 2]
    left, right = cut(region, 2)
    assert 26 <= left.box[2] <= 34 and left.box[0] == 100 and right.box[0] + right.box[2] == 160
    assert piece_counts(DigitRegion((0, 0, 20, 40), mask[:, :20], 4.0)) == [1]


def test_touching_digits_are_read_as_two(recognizer: Recognizer, digits, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = digits
    photos = [(encode(_touching_row([images[i], images[i + 1]], overlap=overlap)), f"{labels[i]}{labels[i + 1]}")
              for i in range(0, 80, 2) for overlap in (0, 6)]

    def share_read() -> float:
        return sum(recognizer.read(photo).text == truth for photo, truth in photos) / len(photos)

    with_cuts = share_read()
    monkeypatch.setattr(recognize, "SPLIT_PENALTY", 1e9)
    assert with_cuts >= 0.68 and with_cuts > share_read()  # measured: 72.5% with cuts, 68.8% without


def _prediction(confidence: float) -> DigitPrediction:
    return DigitPrediction(digit=1, confidence=confidence, source="base", base_digit=1, base_confidence=confidence,
                           probabilities=[0.0] * 10)


def test_a_sure_reading_of_a_little_of_the_ink_loses_to_a_reading_of_all_of_it() -> None:
    one_sure_digit = [_prediction(0.99)]
    whole_row = [_prediction(0.9)] * 5
    assert choose_candidate([one_sure_digit, whole_row], [0.2, 1.0], ["segment", "plain"], segment_first=True) == 1
    assert choose_candidate([one_sure_digit, whole_row], [1.0, 1.0], ["segment", "plain"], segment_first=True) == 0
