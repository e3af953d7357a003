"""Helpers for tests that talk to the emulator: a digit image, a running server + Bot + client."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import cv2
import numpy as np
import telegram

from bot.emulator import EmulatorClient, EmulatorServer


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


async def run_fake_bot(bot: telegram.Bot) -> None:
    """A stand-in bot: answers photos with "I read 7" and a correction keyboard, edits on a press."""
    offset = 0
    while True:
        for update in await bot.get_updates(offset=offset, timeout=5):
            offset = update.update_id + 1
            message, query = update.message, update.callback_query
            if message and (message.photo or message.document):
                keyboard = telegram.InlineKeyboardMarkup(
                    [[telegram.InlineKeyboardButton(str(d), callback_data=f"fix:{d}") for d in range(5)],
                     [telegram.InlineKeyboardButton(str(d), callback_data=f"fix:{d}") for d in range(5, 10)],
                     [telegram.InlineKeyboardButton("✅ right", callback_data="ok")]])
                await message.reply_text("I read <b>7</b> (97%)", parse_mode="HTML", reply_markup=keyboard,
                                         do_quote=True)
            elif message and message.text:
                await message.reply_text(f"You said: {message.text}", do_quote=True)
            elif query and query.message:
                digit = query.data.split(":")[-1] if query.data and query.data != "ok" else "7"
                await query.answer(f"Saved: {digit}")
                await bot.edit_message_text(f"Recorded: {digit}", chat_id=query.message.chat.id,
                                            message_id=query.message.message_id)
