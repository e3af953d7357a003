from __future__ import annotations

import pytest

from core.recognize import Recognizer
from tests.reliability.support import base_checkpoint


@pytest.fixture(scope="session")
def recognizer() -> Recognizer:
    return Recognizer(base_checkpoint())
