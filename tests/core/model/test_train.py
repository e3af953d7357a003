import pytest

from core.model.data import load_mnist
from core.model.network import Checkpoint, load_base
from core.model.train import TrainConfig, train_base
from core.sim.photo_crops import PhotoCrops


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


def test_photo_stage_resumes_and_records_its_crops(mnist_dir) -> None:
    """The photo stage runs from a resumed checkpoint on MNIST + crops and stores what it used."""
    start = load_base()
    images, labels = load_mnist(train=False, directory=mnist_dir)
    crops = PhotoCrops(images=images[:256], labels=labels[:256], photos=300, kept_photos=256, seed=9)
    config = TrainConfig(epochs=1, train_subset=512, test_subset=300, batch_size=64, ema_decay=0.9,
                         photo_epochs=1, photo_repeats=2)
    checkpoint, curves = train_base(config, data_dir=mnist_dir, log=lambda _: None, resume=start,
                                    photo_crops=crops)
    assert len(curves["loss"]) == 1  # only the photo stage ran: no stage 1, no polish
    assert checkpoint.meta["photo_crops"] == {"crops": 256, "photos": 300, "kept_photos": 256, "seed": 9,
                                            "style": "classic"}
    assert checkpoint.meta["resumed_from"]["metrics"] == start.metrics
    assert 0.05 < checkpoint.meta["temperature"] < 20
    # Starting from the shipped model at a low learning rate keeps it accurate.
    assert checkpoint.metrics["mnist_test_accuracy"] > 0.97


def test_photo_stage_without_crops_is_refused(mnist_dir) -> None:
    with pytest.raises(ValueError, match="photo crops"):
        train_base(TrainConfig(epochs=1, train_subset=64, photo_epochs=1), data_dir=mnist_dir, log=lambda _: None)
