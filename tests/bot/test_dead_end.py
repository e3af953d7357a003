"""Never a dead end: a photo that is not blank always gets a reading with the keypad, and its
correction is stored like any other; only blank paper gets "no digits"."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.recognize import Recognizer
from storage import repository as repo
from tests.bot.support import running_bot
from tests.core.vision.test_plain_ink import CASES, _photo

ANN = 42


def _scribble() -> bytes:
    """A thin ballpoint squiggle that is no digit: the reading is unsure, but it is a reading."""
    image = np.full((900, 1200, 3), (205, 210, 212), np.uint8)
    steps = np.linspace(0, 6, 60)
    points = np.array([(500 + 40 * t + 60 * np.sin(t * 2.3), 400 + 90 * np.cos(t * 1.7)) for t in steps], np.int32)
    cv2.polylines(image, [points], False, (150, 50, 40), 4, cv2.LINE_AA)
    return cv2.imencode(".jpg", image)[1].tobytes()


def _callbacks(message: dict[str, Any]) -> list[str]:
    return [b["callback_data"] for row in message.get("reply_markup", {}).get("inline_keyboard", []) for b in row]


def test_thin_pen_and_unsure_readings_get_the_keypad_and_corrections_are_stored(
        tmp_path: Path, recognizer: Recognizer) -> None:
    digit, params = CASES["ballpoint"]
    thin_pen = _photo(digit, **params)  # type: ignore[arg-type]

    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer) as h:
            for photo, label in ((thin_pen, 1), (_scribble(), 8)):
                reply = await h.photo_reply(ANN, ANN, photo)
                assert reply["text"].startswith("I read: "), reply["text"]
                callbacks = _callbacks(reply)
                reading_id = int(callbacks[0].split(":")[1])
                assert f"d:{reading_id}:0:{label}" in callbacks  # one button per digit 0-9
                answer = await h.press(ANN, ANN, reply["message_id"], f"d:{reading_id}:0:{label}")
                assert answer["text"] == f"Recorded: {label}"
                with h.sessions() as session:
                    view = repo.get_reading(session, telegram_id=ANN, reading_id=reading_id)
                assert view is not None and [d.label for d in view.digits][:1] == [label]

    asyncio.run(scenario())
