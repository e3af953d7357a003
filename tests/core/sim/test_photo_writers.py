"""core.sim.photo_writers: writers' glyphs and thin-pen photos render, go through the photo pipeline,
and a miss is told apart as segmentation (wrong digit count) or classification (wrong digit)."""

from __future__ import annotations

import numpy as np
import pytest

from core.recognize import DigitPrediction, PhotoReading, Recognizer
from core.sim.photo_writers import (
    CLASSIFICATION,
    GLYPHS,
    RIGHT,
    SEGMENTATION,
    GlyphStyle,
    PhotoWriter,
    draw_glyph,
    labelled_crops,
    miss_kind,
    styled_digit,
)
from core.vision.preprocess import DigitCrop


def _prediction(digit: int) -> DigitPrediction:
    probs = [0.0] * 10
    probs[digit] = 1.0
    return DigitPrediction(digit, 1.0, "base", digit, 1.0, probs)


def _reading(status: str, digits: list[int]) -> PhotoReading:
    crops = [DigitCrop(np.full((28, 28), d, np.uint8), (0, 0, 1, 1)) for d in digits]
    return PhotoReading(status=status, predictions=[_prediction(d) for d in digits], crops=crops)


def test_miss_kind_splits_segmentation_from_classification() -> None:
    assert miss_kind(_reading("ok", [7]), [7]) == RIGHT
    assert miss_kind(_reading("ok", [1]), [7]) == CLASSIFICATION
    assert miss_kind(_reading("no_digit", []), [7]) == SEGMENTATION
    assert miss_kind(_reading("ok", [1, 7]), [7]) == SEGMENTATION  # a digit cut in two
    assert miss_kind(_reading("ok", [4]), [4, 2]) == SEGMENTATION  # two digits read as one
    assert miss_kind(_reading("ok", [4, 3]), [4, 2]) == CLASSIFICATION


def test_labelled_crops_come_only_from_readings_with_the_right_count() -> None:
    readings = [_reading("ok", [3]), _reading("no_digit", []), _reading("ok", [1, 1]), _reading("ok", [5])]
    crops, labels = labelled_crops(readings, [[8], [2], [7], [5]])
    # the misread 3 is labelled with the true 8; the empty and the split readings give nothing
    assert labels.tolist() == [8, 5]
    assert crops.shape == (2, 28, 28) and crops.dtype == np.uint8
    assert crops[0, 0, 0] == 3 and crops[1, 0, 0] == 5
    empty = labelled_crops([_reading("no_digit", [])], [[4]])
    assert empty[0].shape == (0, 28, 28) and len(empty[1]) == 0


@pytest.mark.parametrize("name", sorted(GLYPHS))
def test_glyphs_draw_jittered_mnist_crops(name: str) -> None:
    first = draw_glyph(name, np.random.default_rng(0))
    again = draw_glyph(name, np.random.default_rng(0))
    other = draw_glyph(name, np.random.default_rng(1))
    assert first.shape == (28, 28) and first.dtype == np.uint8 and first.max() > 200
    ys, xs = np.nonzero(first > 30)
    assert 17 <= max(ys.max() - ys.min(), xs.max() - xs.min()) + 1 <= 23  # fitted in the 20x20 box
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_a_writers_glyph_replaces_the_mnist_digit() -> None:
    mnist_like = np.zeros((28, 28), np.uint8)
    mnist_like[4:24, 12:16] = 255  # a plain bar "1"
    style = GlyphStyle(glyphs=((1, "flag1"),))
    own = styled_digit(mnist_like, 1, style, np.random.default_rng(0))
    plain = styled_digit(mnist_like, 7, style, np.random.default_rng(0))  # no glyph for 7: the bar stays
    assert np.abs(own.astype(int) - plain.astype(int)).sum() > 20 * 255
    assert (own > 100).sum() > (plain > 100).sum()  # the flag and the foot add ink


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    from core.model.network import load_base

    return Recognizer(load_base())


def test_photo_writer_photos_go_through_the_pipeline(recognizer: Recognizer) -> None:
    rng = np.random.default_rng(3)
    style = GlyphStyle(glyphs=((7, "cross7"), (4, "open4")))
    labels = np.array([7, 4, 7, 4], np.int64)
    crops = np.stack([styled_digit(np.zeros((28, 28), np.uint8), int(d), style, rng) for d in labels])
    writer = PhotoWriter("test-writer", crops, labels, seed=5)
    photos = writer.photos(range(len(labels)))
    assert [p.labels for p in photos] == [[7], [4], [7], [4]]
    assert writer.photo(1) is photos[1]  # rendered once
    again = PhotoWriter("test-writer", crops, labels, seed=5).photo(1)  # from its own seed
    assert again.data == photos[1].data and again.traits == photos[1].traits
    assert {"capture", "ink", "paper"} <= set(photos[0].traits)  # core.sim.photo_sim's thin-pen style
    readings = recognizer.read_many([p.data for p in photos])
    kinds = [miss_kind(r, p.labels) for r, p in zip(readings, photos, strict=True)]
    for reading, kind, photo in zip(readings, kinds, photos, strict=True):
        found = [p.digit for p in reading.predictions]
        assert kind == (SEGMENTATION if len(found) != 1 else RIGHT if found == photo.labels else CLASSIFICATION)
    assert kinds.count(RIGHT) >= 2  # plain glyphs on a photo: mostly read
    got, got_labels = labelled_crops(readings, [p.labels for p in photos])
    kept = [i for i, k in enumerate(kinds) if k != SEGMENTATION]
    assert got_labels.tolist() == [int(labels[i]) for i in kept]  # the true digits, not the readings
    assert all(np.array_equal(got[j], readings[i].crops[0].image) for j, i in enumerate(kept))
    # the same reading of a digit against a wrong label is a classification miss, not segmentation
    right = next(i for i, k in enumerate(kinds) if k == RIGHT)
    assert miss_kind(readings[right], [(photos[right].labels[0] + 1) % 10]) == CLASSIFICATION


def test_a_blank_photo_is_a_segmentation_miss(recognizer: Recognizer) -> None:
    import cv2

    ok, blank = cv2.imencode(".png", np.full((300, 400, 3), 235, np.uint8))
    assert ok
    reading = recognizer.read(blank.tobytes())
    assert reading.status == "no_digit" and miss_kind(reading, [5]) == SEGMENTATION
    assert len(labelled_crops([reading], [[5]])[1]) == 0


def test_semeion_and_glyph_writers_render(semeion_path: object, mnist_dir: object) -> None:
    from core.sim.photo_writers import photo_writers

    writers = photo_writers("dev", n=6)
    assert [w.name for w in writers] == ["dev-photo-continental", "dev-photo-loops",
                                         "semeion-photo-round0", "semeion-photo-round1"]
    for writer in writers:
        assert writer.crops.shape == (6, 28, 28) and writer.crops.dtype == np.uint8 and len(writer) == 6
        assert set(writer.labels.tolist()) <= set(range(10))
    eval_names = {w.name for w in photo_writers("eval", n=2)}
    assert not eval_names & {w.name for w in writers}  # dev and eval writers are different people
    photo = writers[2].photo(0)
    assert photo.labels == [int(writers[2].labels[0])] and len(photo.data) > 100
