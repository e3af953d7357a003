"""core.vision.train_ink end to end on a handful of photos: renders, trains, evaluates, saves a loadable network."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.vision.ink_net import InkFinder


@pytest.mark.slow
def test_a_dry_run_saves_a_network_that_loads_and_answers(tmp_path: Path) -> None:
    out = tmp_path / "ink.pt"
    done = subprocess.run([sys.executable, "-m", "core.vision.train_ink", "--dry-run", "--threads", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "precision" in done.stdout and out.exists()
    finder = InkFinder(out)
    assert {"precision", "recall", "f1", "photos", "steps"} <= set(finder.metrics)
    assert finder.probability(np.full((50, 70), 200, np.uint8)).shape == (50, 70)
