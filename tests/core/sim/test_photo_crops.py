import numpy as np
import pytest
import torch

from core.model.network import for_inference, load_base, normalize
from core.sim import photo_crops
from core.sim.photo_crops import PhotoCrops, render_crops


@pytest.fixture()
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(photo_crops, "CHUNK_PHOTOS", 5)


def test_crops_are_labelled_digits_from_single_and_row_photos(mnist_dir, small_chunks) -> None:
    """Half the chunks are rows; every kept crop carries its drawn digit's label."""
    crops = render_crops(10, seed=3, data_dir=mnist_dir, workers=1)
    assert crops.photos == 10
    assert crops.images.dtype == torch.uint8 and crops.images.shape[1:] == (28, 28)
    assert len(crops.images) == len(crops.labels) > crops.kept_photos  # the row chunk gave several per photo
    assert crops.kept_photos >= 8  # the pipeline finds the right digit count on most photos
    assert set(crops.labels.tolist()) <= set(range(10))
    # The labels line up with the crops: the shipped model reads nearly all of them.
    with torch.inference_mode():
        predicted = for_inference(load_base().build())(normalize(crops.images)).argmax(1)
    assert float((predicted == crops.labels).float().mean()) >= 0.85


def test_crops_do_not_depend_on_the_number_of_workers(mnist_dir, small_chunks, tmp_path) -> None:
    one = render_crops(10, seed=4, data_dir=mnist_dir, workers=1)
    two = render_crops(10, seed=4, data_dir=mnist_dir, workers=2)
    assert torch.equal(one.images, two.images) and torch.equal(one.labels, two.labels)
    other = render_crops(5, seed=5, data_dir=mnist_dir, workers=1)
    assert not np.array_equal(one.images[: len(other.images)].numpy(), other.images[: len(one.images)].numpy())
    path = tmp_path / "crops.pt"
    one.save(path)
    loaded = PhotoCrops.load(path)
    assert torch.equal(loaded.images, one.images) and loaded.seed == 4 and loaded.photos == 10


def test_crop_sets_of_two_styles_join() -> None:
    images = torch.zeros((5, 28, 28), dtype=torch.uint8)
    classic = PhotoCrops(images=images[:3], labels=torch.tensor([1, 2, 3]), photos=4, kept_photos=3, seed=1)
    thin = PhotoCrops(images=images[:2], labels=torch.tensor([7, 8]), photos=2, kept_photos=1, seed=2, style="thin")
    joined = PhotoCrops.concat([classic, thin])
    assert joined.labels.tolist() == [1, 2, 3, 7, 8] and len(joined.images) == 5
    assert (joined.photos, joined.kept_photos, joined.style) == (6, 4, "classic+thin")
