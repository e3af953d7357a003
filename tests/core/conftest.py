"""Fixtures shared by the core tests."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def digits(mnist_dir) -> tuple[np.ndarray, np.ndarray]:
    """The first 200 MNIST test digits and their labels."""
    from core.model.data import load_mnist

    images, labels = load_mnist(train=False, directory=mnist_dir)
    return images[:200].numpy(), labels[:200].numpy()
