import numpy as np
import pytest
import torch

from core.model.data import load_mnist
from core.model.network import Checkpoint, DigitNet
from core.recognize import BASE, PERSONAL, PersonalModel, Recognizer

HEAD_PREFIXES = ("conv3.", "bn3.", "fc1.", "fc2.")


@pytest.fixture(scope="module")
def base() -> Checkpoint:
    torch.manual_seed(0)
    return Checkpoint(state_dict=DigitNet().eval().state_dict())


def _personal(base: Checkpoint, *, favour: int, temperature: float = 1.0, threshold: float = 0.9) -> PersonalModel:
    head = {k: v.clone() for k, v in base.state_dict.items() if k.startswith(HEAD_PREFIXES)}
    head["fc2.bias"] = torch.full((10,), -50.0)
    head["fc2.bias"][favour] = 50.0
    return PersonalModel(Checkpoint(state_dict=head, meta={"temperature": temperature, "threshold": threshold}))


def _images(n: int = 5) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, size=(n, 28, 28), dtype=np.uint8)


def test_base_only(base: Checkpoint) -> None:
    predictions = Recognizer(base).classify(_images())
    assert len(predictions) == 5
    for p in predictions:
        assert p.source == BASE and p.digit == p.base_digit
        assert abs(sum(p.probabilities) - 1) < 1e-4
        assert p.confidence == pytest.approx(max(p.probabilities), abs=1e-5)


def test_confident_personal_model_answers(base: Checkpoint) -> None:
    predictions = Recognizer(base).classify(_images(), _personal(base, favour=3))
    assert all(p.source == PERSONAL and p.digit == 3 for p in predictions)
    assert all(p.confidence > 0.99 for p in predictions)


def test_unsure_personal_model_falls_back_to_base(base: Checkpoint) -> None:
    recognizer = Recognizer(base)
    # a huge temperature flattens the personal probabilities below any sensible threshold
    unsure = _personal(base, favour=3, temperature=1e4, threshold=0.5)
    with_personal = recognizer.classify(_images(), unsure)
    base_only = recognizer.classify(_images())
    assert [p.source for p in with_personal] == [BASE] * 5
    assert [p.digit for p in with_personal] == [p.digit for p in base_only]


def test_personal_model_round_trip(base: Checkpoint) -> None:
    personal = _personal(base, favour=7)
    assert personal.checkpoint is not None
    restored = PersonalModel.from_bytes(personal.checkpoint.to_bytes(), version=2)
    assert restored.version == 2 and restored.threshold == 0.9
    assert Recognizer(base).classify(_images(2), restored)[0].digit == 7


def test_empty_batch(base: Checkpoint) -> None:
    assert Recognizer(base).classify(np.zeros((0, 28, 28), np.uint8)) == []


def test_shipped_weights_score_on_mnist_test(mnist_dir) -> None:
    """The shipped base model meets the issue's bar: >= 99.6% on the 10,000 MNIST test digits."""
    from core.model.network import load_base

    images, labels = load_mnist(train=False, directory=mnist_dir)
    recognizer = Recognizer(load_base())
    correct = 0
    for start in range(0, len(images), 2000):
        batch = recognizer.classify(images[start:start + 2000].numpy())
        correct += sum(int(p.digit == y) for p, y in zip(batch, labels[start:start + 2000].tolist(), strict=True))
    assert correct / len(images) >= 0.996
