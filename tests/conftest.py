"""Shared fixtures: where the development data lives (../shared/data, or DIGITS_* overrides)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.data import default_mnist_dir, default_semeion_path


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    path = default_mnist_dir()
    if not path.exists():
        pytest.skip(f"MNIST not found at {path}")
    return path


@pytest.fixture(scope="session")
def semeion_path() -> Path:
    path = default_semeion_path()
    if not path.exists():
        pytest.skip(f"Semeion not found at {path}")
    return path
