"""The real-photo dev set (../shared/data/real-dev): the floors reached per group, so that a change
that loses real photos fails here. Measure-only data: nothing here trains or tunes on it."""

from __future__ import annotations

import cv2
import pytest
import torch

from bench.real_photos import CHEQUE_DIGITS, CHEQUE_ROWS, PHONE_ROWS, PHONE_SINGLE, load_photos, score
from core.model.network import load_base
from core.recognize import Recognizer

# What commit 7fa31da reads (100% / 8 of 9 / 94.7% / 41.8%), less a margin of one to three photos.
FLOORS = {PHONE_SINGLE: 0.98, PHONE_ROWS: 0.77, CHEQUE_DIGITS: 0.92, CHEQUE_ROWS: 0.38}


def test_real_dev_floors() -> None:
    try:
        photos = load_photos()
    except FileNotFoundError as missing:
        pytest.skip(f"the real-photo dev set is not here: {missing}")
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    recognizer = Recognizer(load_base())
    readings = [(photo, recognizer.read(photo.path.read_bytes()).text) for photo in photos]
    scores = score(readings)
    empty = sum(1 for photo, text in readings if not text and photo.group == PHONE_SINGLE)
    assert empty == 0, "a real phone photo of a digit got no reading"
    for group, floor in FLOORS.items():
        assert scores[group] >= floor, f"{group}: {scores[group]:.1%} < {floor:.0%}"
