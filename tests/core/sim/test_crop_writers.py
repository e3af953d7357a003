"""core.sim.crop_writers: simulated users look like MNIST crops; labelled folders load safely."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from core.sim.crop_writers import Style, apply_style, fit_to_mnist_box, load_labelled_folder, render_semeion


def _bar_digit() -> np.ndarray:
    image = np.zeros((28, 28), np.uint8)
    image[4:24, 12:16] = 255
    return image


def test_fit_to_mnist_box_fits_20_pixels_centred_by_mass() -> None:
    wide = np.zeros((50, 90), np.uint8)
    wide[10:30, 5:85] = 255
    out = fit_to_mnist_box(wide)
    xs = np.nonzero(out > 127)[1]
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert 18 <= xs.max() - xs.min() + 1 <= 21
    moments = cv2.moments(out.astype(np.float32))
    assert abs(moments["m10"] / moments["m00"] - 14) < 1 and abs(moments["m01"] / moments["m00"] - 14) < 1
    assert not fit_to_mnist_box(np.zeros((10, 10), np.uint8)).any()


def test_render_semeion_turns_16x16_binary_into_mnist_crops() -> None:
    block = np.zeros((2, 16, 16), np.uint8)
    block[:, 2:14, 6:10] = 255
    out = render_semeion(block)
    assert out.shape == (2, 28, 28) and out.max() > 200 and out[:, :2].max() == 0


def test_style_is_consistent_and_changes_the_digit() -> None:
    style = Style(shear=0.6, thickness=1, flagged_one=True)
    first = apply_style(_bar_digit(), 1, style, np.random.default_rng(0))
    again = apply_style(_bar_digit(), 1, style, np.random.default_rng(0))
    plain = apply_style(_bar_digit(), 1, Style(), np.random.default_rng(0))
    assert np.array_equal(first, again)
    assert np.abs(first.astype(int) - plain.astype(int)).sum() > 20 * 255


def test_labelled_folder_keeps_good_images_and_explains_skipped_ones(tmp_path: Path) -> None:
    for digit in (1, 7):
        (tmp_path / str(digit)).mkdir()
        cv2.imwrite(str(tmp_path / str(digit) / "a.png"), _bar_digit())
        cv2.imwrite(str(tmp_path / str(digit) / "paper.png"), 255 - _bar_digit())  # dark ink on white
    (tmp_path / "7" / "broken.png").write_bytes(b"not an image")
    (tmp_path / "7" / "notes.txt").write_text("ignored")
    (tmp_path / "x").mkdir()
    images, labels, skipped = load_labelled_folder(tmp_path)
    assert images.shape == (4, 28, 28) and labels.tolist() == [1, 1, 7, 7]
    assert all(image[10, 13] == 255 and image[0, 0] == 0 for image in images)
    assert len(skipped) == 1 and "broken.png" in skipped[0]
    empty = load_labelled_folder(tmp_path / "missing")
    assert empty[0].shape == (0, 28, 28) and len(empty[1]) == 0
