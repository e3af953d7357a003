"""Datasets on local disk: MNIST (read with torchvision's class) and Semeion. Never downloads."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import MNIST

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The development data sits beside the checkout (../shared/data). The entry points move it
# (DIGITS_DATA_DIR and friends, read by digitbot.settings.data_paths) with use_data_paths.
DEFAULT_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data"


@dataclass(frozen=True)
class DataPaths:
    """Where the datasets are found when a caller names no path, and where gzipped MNIST is unpacked."""

    mnist_dir: Path = DEFAULT_DATA_DIR / "mnist"
    semeion_path: Path = DEFAULT_DATA_DIR / "semeion" / "semeion.data"
    cache_dir: Path = Path.home() / ".cache" / "digitbot"


_paths = DataPaths()


def use_data_paths(paths: DataPaths) -> None:
    """Set the defaults for this process (the entry points: the CLI, the Celery worker, the tests)."""
    global _paths
    _paths = paths


def default_mnist_dir() -> Path:
    return _paths.mnist_dir


def default_semeion_path() -> Path:
    return _paths.semeion_path


def _find(directory: Path, name: str) -> Path:
    for candidate in (directory / name, directory / f"{name}.gz",
                      directory / "MNIST" / "raw" / name, directory / "MNIST" / "raw" / f"{name}.gz"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"MNIST file {name}(.gz) not found under {directory}")


def mnist_checksum(directory: str | Path | None = None) -> str:
    """sha256 over the four MNIST files as found (gz or raw), in a fixed order."""
    directory = Path(directory or default_mnist_dir())
    digest = hashlib.sha256()
    for name in MNIST_FILES:
        path = _find(directory, name)
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def mnist_root(directory: str | Path | None = None, *, cache_dir: str | Path | None = None) -> Path:
    """A root that torchvision's MNIST class reads with download=False.

    Accepts a folder of the four IDX files (gzip or not) or an existing torchvision root.
    Gzipped files are decompressed once into a folder of ``cache_dir`` keyed by their checksum.
    """
    directory = Path(directory or default_mnist_dir())
    if all((directory / "MNIST" / "raw" / name).exists() for name in MNIST_FILES):
        return directory
    root = Path(cache_dir or _paths.cache_dir) / f"mnist-{mnist_checksum(directory)[:16]}"
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        target = raw / name
        if target.exists():
            continue
        source = _find(directory, name)
        # A private temporary name: processes sharing the cache (workers on one volume) may
        # decompress the same file at once; each replaces the target atomically with a whole copy.
        fd, tmp_name = tempfile.mkstemp(dir=raw, prefix=f".{name}.", suffix=".tmp")
        tmp = Path(tmp_name)
        opener = gzip.open if source.suffix == ".gz" else open
        try:
            with opener(source, "rb") as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst)
            tmp.replace(target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return root


def load_mnist(train: bool, directory: str | Path | None = None, *,
               cache_dir: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N,28,28), labels int64 (N,))."""
    dataset = MNIST(str(mnist_root(directory, cache_dir=cache_dir)), train=train, download=False)
    return dataset.data.clone(), dataset.targets.clone()


def load_semeion(path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Semeion digits as (images 16x16 uint8 0/255, labels, collection round).

    Records come in six rounds of the digits 0..9 (about 20 records per digit per round), so the
    round index groups samples collected together; use it to split "users" without overlap.
    """
    rows = np.loadtxt(path or default_semeion_path(), dtype=np.float32)
    images = (rows[:, :256].reshape(-1, 16, 16) * 255).astype(np.uint8)
    labels = rows[:, 256:266].argmax(axis=1).astype(np.int64)
    rounds = np.concatenate([[0], np.cumsum((labels[1:] == 0) & (labels[:-1] == 9))])
    return images, labels, rounds.astype(np.int64)
