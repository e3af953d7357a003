from __future__ import annotations

import pytest

from tests.emulator.support import digit_png


@pytest.fixture(scope="session")
def png() -> bytes:
    return digit_png()
