"""Learning from the first correction: the user's memory changes their very next reading of a
look-alike, no one else's, and /forget takes it away (core/personal/memory.py through bot/services/reading.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from core.recognize import Recognizer
from storage import repository as repo
from tests.bot.support import BotHarness, digits_photo, running_bot

ANN, BOB = 52, 53


async def _read(h: BotHarness, telegram_id: int, photo: bytes) -> tuple[int, list[tuple[int, str]]]:
    """(bot message id, [(digit, source)]) of the bot's reading of ``photo``."""
    reply = await h.photo_reply(telegram_id, telegram_id, photo)
    reading = int(reply["reply_markup"]["inline_keyboard"][0][0]["callback_data"].split(":")[1])
    with h.sessions() as session:
        view = repo.get_reading(session, telegram_id=telegram_id, reading_id=reading)
    assert view is not None
    return reply["message_id"], [(d.digit, d.source) for d in view.digits]


def test_a_correction_changes_the_next_reading_for_that_user_only(tmp_path: Path,
                                                                   recognizer: Recognizer) -> None:
    photo, same_digit_again = digits_photo("6"), digits_photo("6", height=400)

    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer) as h:
            message_id, first = await _read(h, ANN, photo)
            assert first == [(6, "base")]
            await h.text_reply(ANN, ANN, "5", reply_to=message_id)  # Ann writes her 5s like this

            _, after = await _read(h, ANN, same_digit_again)
            assert after == [(5, "personal")]  # no fine-tune ran: the memory answered
            _, bobs = await _read(h, BOB, same_digit_again)
            assert bobs == [(6, "base")]  # Bob's readings are his own

            asked = await h.command_reply(ANN, ANN, "forget")
            await h.press(ANN, ANN, asked["message_id"], f"f:yes:{ANN}")
            _, forgotten = await _read(h, ANN, same_digit_again)
            assert forgotten == [(6, "base")]

    asyncio.run(scenario())
