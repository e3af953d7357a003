"""core.model.data: the MNIST cache survives processes decompressing it at the same time."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from core.model.data import MNIST_FILES, load_mnist, mnist_root


def test_concurrent_first_use_leaves_whole_files_and_no_temporaries(
        mnist_dir: Path, tmp_path: Path) -> None:
    if not (mnist_dir / f"{MNIST_FILES[0]}.gz").exists():
        pytest.skip("the MNIST folder holds no gzipped files: nothing to decompress")
    cache = tmp_path / "digitbot"
    roots: list[Path] = []
    errors: list[BaseException] = []

    def first_use() -> None:
        try:
            roots.append(mnist_root(mnist_dir, cache_dir=cache))
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=first_use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(set(roots)) == 1
    raw = roots[0] / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(MNIST_FILES)  # no .tmp left behind
    images, labels = load_mnist(train=False, directory=mnist_dir, cache_dir=cache)
    assert images.shape == (10_000, 28, 28) and labels[:5].tolist() == [7, 2, 1, 0, 4]
