"""Helpers for tests that talk to the emulator: a digit image, a running server + Bot + client."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import cv2
import numpy as np
import telegram

from emulator import EmulatorClient, EmulatorServer


def digit_png(digit: str = "7", size: tuple[int, int] = (600, 400)) -> bytes:
    """A dark digit drawn on white paper, PNG-encoded."""
    height, width = size
    image = np.full((height, width, 3), 235, np.uint8)
    cv2.putText(image, digit, (width // 5, int(height * 0.7)), cv2.FONT_HERSHEY_SIMPLEX,
                height / 60, (20, 20, 20), max(2, height // 30))
    return cv2.imencode(".png", image)[1].tobytes()


@dataclass
class Harness:
    server: EmulatorServer
    bot: telegram.Bot
    users: EmulatorClient


@contextlib.asynccontextmanager
async def harness() -> AsyncIterator[Harness]:
    async with EmulatorServer(port=0) as server, EmulatorClient(server.base_url) as users:
        bot = telegram.Bot(server.token, base_url=server.bot_api_url, base_file_url=server.file_api_url)
        async with bot:
            yield Harness(server, bot, users)

