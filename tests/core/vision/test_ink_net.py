"""The learned ink finder: its training truth, its shape contract, and what the shipped weights find."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from core.sim.photo_sim import photo_set
from core.vision.ink_net import WEIGHTS, InkFinder, InkNet, inputs, learned_segmentation, resize_truth
from core.vision.preprocess import decode_working, preprocess
from tests.core.vision.test_plain_ink import CASES, _photo


def test_the_true_ink_lies_under_the_drawn_ink_and_leaves_the_photo_as_it_was(digits) -> None:
    images, labels = digits
    with_truth = photo_set(images, labels, 6, (1, 3), 21, "thin", truth=True)
    without = photo_set(images, labels, 6, (1, 3), 21, "thin")
    assert [p.data for p in with_truth] == [p.data for p in without]
    assert all(p.ink is None for p in without)
    for photo in with_truth:
        gray = decode_working(photo.data)
        assert gray is not None and photo.ink is not None
        size = photo.traits["size"]
        assert isinstance(size, tuple) and photo.ink.shape == (size[1], size[0])
        truth = resize_truth(photo.ink, gray.shape) > 0.5
        assert truth.any()
        # Ink is darker than the paper around it, wherever the photo's paper is (after warping too).
        paper = cv2.dilate(gray, np.ones((15, 15), np.uint8))
        assert np.median(gray[truth]) < np.median(paper[truth]) - 5


@pytest.mark.parametrize("shape", [(37, 53), (160, 160), (64, 201)])
def test_the_network_answers_every_pixel_of_any_size(shape: tuple[int, int]) -> None:
    gray = np.full(shape, 200, np.uint8)
    logits = InkNet()(torch.from_numpy(inputs(gray))[None])
    assert logits.shape == (1, 1, *shape)


needs_weights = pytest.mark.skipif(not WEIGHTS.exists(), reason=f"no trained ink network at {WEIGHTS}")


@needs_weights
@pytest.mark.parametrize("case", ["ballpoint", "pencil", "sticky-note"])
def test_the_shipped_network_finds_thin_pens_and_not_the_paper(case: str) -> None:
    digit, params = CASES[case]
    gray = decode_working(_photo(digit, **params))  # type: ignore[arg-type]
    assert gray is not None
    found = learned_segmentation(gray, InkFinder(), pad=False)
    assert len(found.regions) == 1
    x, y, w, h = found.regions[0].box
    # the drawn box, in the working image's pixels
    scale = gray.shape[0] / params["size"][1]  # type: ignore[index]
    bx, by, bw, bh = (round(v * scale) for v in params["box"])  # type: ignore[attr-defined]
    assert abs(y - by) < 0.15 * bh and abs(h - bh) < 0.25 * bh
    assert x < bx + bw and x + w > bx


@needs_weights
def test_blank_paper_with_a_shadow_and_ruled_lines_is_no_ink() -> None:
    height, width = 480, 640
    yy, xx = np.mgrid[0:height, 0:width]
    paper = 215 - 60 * (xx > 400 + 0.2 * yy)  # a hard shadow
    paper = paper - 40 * ((yy % 40) < 2)  # ruled lines
    gray = np.clip(paper + np.random.default_rng(1).normal(0, 3, paper.shape), 0, 255).astype(np.uint8)
    found = learned_segmentation(gray, InkFinder(), pad=False)
    assert found.regions == []


@needs_weights
def test_the_learned_look_is_one_of_the_candidates() -> None:
    digit, params = CASES["ballpoint-7"]
    result = preprocess(_photo(digit, **params), every_look=True)  # type: ignore[arg-type]
    assert "learned" in {c.look for c in result.candidates}
