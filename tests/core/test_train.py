import pytest

from core.model import Checkpoint
from core.train import TrainConfig, train_base


def test_train_base_smoke_run(mnist_dir, tmp_path) -> None:
    """One short epoch on a subset: the loop runs, learns something and writes a full checkpoint."""
    config = TrainConfig(epochs=1, train_subset=1536, test_subset=300, batch_size=64, ema_decay=0.9)
    checkpoint, curves = train_base(config, data_dir=mnist_dir, log=lambda _: None)
    assert len(curves["loss"]) == 1
    assert curves["test_acc"][0] > 0.5  # far above chance after ~24 steps
    assert len(checkpoint.meta["data_sha256"]) == 64
    checkpoint.save(tmp_path / "m.pt")
    restored = Checkpoint.load(tmp_path / "m.pt")
    assert restored.metrics["mnist_test_accuracy"] == pytest.approx(checkpoint.metrics["mnist_test_accuracy"])
