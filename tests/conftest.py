"""Shared fixtures: where the development data lives (../shared/data, or DIGITS_* overrides)."""

from __future__ import annotations

import os
from pathlib import Path

# One thread per test process (and for the subprocesses tests start): the suite runs on small
# batches, and oversubscribed OpenMP threads on a 2-core machine make everything much slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

from core.model.data import default_mnist_dir, default_semeion_path, use_data_paths
from digitbot.settings import data_paths

torch.set_num_threads(1)
use_data_paths(data_paths())  # DIGITS_DATA_DIR and friends (.ci/run exports it for clones made elsewhere)


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
