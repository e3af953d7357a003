from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from core.model.network import DEFAULT_WEIGHTS, Checkpoint, DigitNet, load_base
from core.recognize import Recognizer


def _base_checkpoint() -> Checkpoint:
    """The shipped base model (or $DIGITBOT_BASE_WEIGHTS). The bot tests check the conversation, not
    accuracy, so without trained weights a seeded untrained network stands in."""
    for candidate in (os.environ.get("DIGITBOT_BASE_WEIGHTS"), DEFAULT_WEIGHTS):
        if candidate and Path(candidate).exists():
            try:
                return load_base(candidate)
            except (ValueError, RuntimeError, OSError):
                continue
    torch.manual_seed(0)
    return Checkpoint(state_dict=DigitNet().eval().state_dict())


@pytest.fixture(scope="session")
def recognizer() -> Recognizer:
    return Recognizer(_base_checkpoint())
