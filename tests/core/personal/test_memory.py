"""The personal memory: one correction changes the next reading of a look-alike, and nothing else."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.model.data import load_mnist
from core.model.network import Checkpoint, load_base
from core.personal.memory import MemoryConfig, PersonalMemory
from core.recognize import BASE, PERSONAL, PersonalModel, Recognizer


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    return Recognizer(load_base())


def _unsure_digits(recognizer: Recognizer, digits: tuple[np.ndarray, np.ndarray]) -> list[int]:
    """Indices of MNIST test digits the base reads with a real runner-up (confidence < 0.97)."""
    predictions = recognizer.classify(digits[0])
    return [i for i, p in enumerate(predictions) if p.confidence < 0.97]


def test_empty_memory_reads_as_the_base(recognizer: Recognizer, digits) -> None:
    images, _ = digits
    plain = recognizer.classify(images[:50])
    remembered = recognizer.classify(images[:50], PersonalModel(None, memory=PersonalMemory(
        np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64))))
    assert [p.probabilities for p in remembered] == [p.probabilities for p in plain]


def test_one_correction_changes_the_next_reading_of_a_look_alike(recognizer: Recognizer, digits) -> None:
    images, _ = digits
    unsure = _unsure_digits(recognizer, digits)
    assert unsure, "the first 200 MNIST test digits hold no unsure reading"
    index = unsure[0]
    before = recognizer.classify(images[index:index + 1])[0]
    corrected = before.runner_up()
    # the user corrects this digit to the runner-up; a slightly shifted copy of it comes next
    memory = PersonalMemory(images[index:index + 1], np.array([corrected]))
    look_alike = np.roll(images[index], 1, axis=1)[None]
    after = recognizer.classify(look_alike, PersonalModel(None, memory=memory))[0]
    assert after.digit == corrected and after.source == PERSONAL
    assert after.base_digit == before.digit  # the base's own view is still reported


def test_unrelated_digits_are_not_moved(recognizer: Recognizer, digits) -> None:
    images, labels = digits
    ones = np.flatnonzero(labels == 1)[:3]
    zeros = np.flatnonzero(labels == 0)[:20]
    memory = PersonalMemory(images[ones], np.full(3, 7))  # the user's "1"s taught as 7s
    readings = recognizer.classify(images[zeros], PersonalModel(None, memory=memory))
    assert all(p.digit == 0 and p.source == BASE for p in readings)


def test_memory_costs_mnist_at_most_three_tenths_of_a_point(recognizer: Recognizer, mnist_dir) -> None:
    """A hard writer's 100 labels remembered (a styled dev writer from MNIST training digits), read
    against 2,000 MNIST test digits: the calibrated blend may cost at most 0.3 points."""
    from core.sim.crop_writers import DEV_STYLES, styled_user

    writer = styled_user("dev-back-flag1", DEV_STYLES["dev-back-flag1"], n=100)
    mnist_images, mnist_labels = load_mnist(train=False, directory=mnist_dir)
    images, labels = mnist_images[:2000].numpy(), mnist_labels[:2000].numpy()
    memory = PersonalMemory(writer.images, writer.labels)
    base = np.array([p.digit for p in recognizer.classify(images)])
    served = np.array([p.digit for p in recognizer.classify(images, PersonalModel(None, memory=memory))])
    assert np.mean(served == labels) >= np.mean(base == labels) - 0.003
    # and it did learn the writer: their own digits are read at least as well
    own_base = np.mean([p.digit == y for p, y in zip(recognizer.classify(writer.images), writer.labels,
                                                      strict=True)])
    own_served = np.mean([p.digit == y for p, y in zip(
        recognizer.classify(writer.images, PersonalModel(None, memory=memory)), writer.labels, strict=True)])
    assert own_served > own_base


def test_memory_travels_in_the_personal_checkpoint(tmp_path, digits) -> None:
    images, labels = digits
    memory = PersonalMemory(images[:5], labels[:5])
    head = {k: v for k, v in load_base().state_dict.items() if k.startswith("fc2.")}
    path = tmp_path / "me.pt"
    Checkpoint(state_dict=head, meta={"temperature": 1.0}, memory=memory.to_dict()).save(path)
    loaded = PersonalModel.from_bytes(path.read_bytes())
    assert loaded.memory is not None
    assert np.array_equal(loaded.memory.images, images[:5]) and np.array_equal(loaded.memory.labels, labels[:5])


def test_memory_keeps_the_most_recent_labels_and_checks_shapes(digits) -> None:
    images, labels = digits
    memory = PersonalMemory(images[:10], labels[:10], MemoryConfig(max_samples=4))
    assert len(memory) == 4 and np.array_equal(memory.labels, labels[6:10])
    with pytest.raises(ValueError):
        PersonalMemory(images[:3], labels[:2])
    with pytest.raises(ValueError):
        PersonalMemory.from_dict({"format": "something else", "images": torch.zeros(0)})


def test_a_rebuilt_memory_computes_only_the_new_samples_features(recognizer: Recognizer, digits) -> None:
    images, labels = digits
    embedded: list[int] = []

    def embed(crops: np.ndarray) -> torch.Tensor:
        embedded.append(len(crops))
        return recognizer.embed(crops)

    before = PersonalMemory(images[:3], labels[:3], ids=np.array([11, 12, 13]))
    before.embeddings(1, embed)
    # one more label, and sample 12 corrected: same crop, new label
    after = PersonalMemory(images[:4], np.array([labels[0], 9, labels[2], labels[3]]), ids=np.array([11, 12, 13, 14]))
    after.adopt(before)
    rows = after.embeddings(1, embed)
    views = after.config.views  # each crop is embedded with its transformed views
    assert embedded == [3 * views, views]
    fresh = PersonalMemory(images[:4], labels[:4]).embeddings(2, recognizer.embed)
    assert torch.allclose(rows, fresh, atol=1e-5)


def test_a_memory_that_would_cost_mnist_is_weakened_to_the_bound(mnist_dir) -> None:
    """A writer whose "1" looks like MNIST's 7s (a flagged 1 without a foot): at full strength their
    memory reads many of MNIST's 7s as 1s; calibrated on the probe it stays within 0.3 points."""
    images, labels = (t[:2000].numpy() for t in load_mnist(train=False, directory=mnist_dir))
    recognizer = Recognizer(load_base(), mnist_probe=(images, labels))
    sevens = np.flatnonzero(labels == 7)[:5]
    memory = PersonalMemory(images[sevens], np.ones(5, np.int64))
    base, _, _ = recognizer.probabilities(images)
    features = recognizer.embed(images)
    full = memory.blend(base, memory.evidence(features, memory.embeddings(0, recognizer.embed)).numpy())
    base_accuracy = np.mean(base.argmax(1) == labels)
    assert np.mean(full.argmax(1) == labels) < base_accuracy - 0.003  # uncalibrated: over the bound
    served = np.array([p.digit for p in recognizer.classify(images, PersonalModel(None, memory=memory))])
    assert np.mean(served == labels) >= base_accuracy - 0.003


def test_views_remember_a_crop_under_small_transforms(recognizer: Recognizer, digits) -> None:
    """A crop's views are the crop itself and fixed small transforms of it, the same whatever else is
    remembered; a query's weight for it is that of its nearest view (the crop itself weighs 1)."""
    images, labels = digits
    memory = PersonalMemory(images[:4], labels[:4], MemoryConfig(views=5))
    rows = memory.embeddings(0, recognizer.embed)
    assert rows.shape[:2] == (4, 5)
    alone = PersonalMemory(images[2:3], labels[2:3], MemoryConfig(views=5)).embeddings(0, recognizer.embed)
    assert torch.allclose(rows[2], alone[0], atol=1e-5)
    assert not torch.allclose(rows[2, 0], rows[2, 1], atol=1e-3)  # the views differ from the crop
    votes = memory.evidence(recognizer.embed(images[2:3]), rows)
    assert votes[0, labels[2]] >= 1.0 - 1e-4
    single = PersonalMemory(images[:4], labels[:4], MemoryConfig(views=1))
    assert torch.all(votes >= single.evidence(recognizer.embed(images[2:3]),
                                              single.embeddings(0, recognizer.embed)) - 1e-5)


def test_the_memory_beside_a_head_holds_only_the_labels_after_its_training(recognizer: Recognizer, digits) -> None:
    images, labels = digits
    embedded: list[int] = []

    def embed(crops: np.ndarray) -> torch.Tensor:
        embedded.append(len(crops))
        return recognizer.embed(crops)

    memory = PersonalMemory(images[:10], labels[:10], ids=np.arange(10))
    rows = memory.embeddings(0, embed)
    later = memory.after(6)  # a head trained on the first 6 labels
    assert later.ids is not None and np.array_equal(later.ids, np.arange(6, 10))
    assert np.array_equal(later.labels, labels[6:10])
    assert torch.equal(later.embeddings(0, embed), rows[6:]) and len(embedded) == 1  # nothing recomputed
    assert len(memory.after(0)) == 10 and len(memory.after(25)) == 0
    # a memory that kept only its most recent samples counts in labelling order all the same
    recent = PersonalMemory(images[:10], labels[:10], MemoryConfig(max_samples=4))  # holds labels 6..9
    assert np.array_equal(recent.after(8).labels, labels[8:10]) and len(recent.after(3)) == 4
    # an empty memory beside the head reads as the head alone
    head = {k: v for k, v in load_base().state_dict.items() if k.startswith("fc2.")}
    checkpoint = Checkpoint(state_dict=head, meta={"temperature": 1.0, "threshold": 0.0})
    alone = recognizer.classify(images[:20], PersonalModel(checkpoint))
    beside = recognizer.classify(images[:20], PersonalModel(checkpoint, memory=memory.after(10)))
    assert [p.probabilities for p in beside] == [p.probabilities for p in alone]
