"""Telegram's limits and modes the bot must live with: group privacy mode, photo dimensions,
keyboard size."""
# mypy: disable-error-code="union-attr"

from __future__ import annotations

import asyncio

import pytest
import telegram
from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from emulator import EmulatorClient, EmulatorServer
from tests.emulator.support import digit_png, harness


def test_group_privacy_mode_delivers_only_what_is_addressed_to_the_bot(png: bytes) -> None:
    async def scenario() -> None:
        async with EmulatorServer(group_privacy=True) as server, EmulatorClient(server.base_url) as users, \
                telegram.Bot(server.token, base_url=server.bot_api_url) as bot:
            assert not (await bot.get_me()).can_read_all_group_messages
            await users.create_group(-5, [1, 2])
            await users.send_photo(1, -5, png)  # not for the bot: stays in the group
            await users.send_text(2, -5, "hello everyone")
            await users.send_command(1, -5, "stats")
            await users.send_photo(2, -5, png, caption="@digitbot_emulator_bot what is this?")
            answer = await bot.send_message(-5, "I read 7")
            await users.send_text(1, -5, "4", reply_to=answer.message_id)
            await users.send_photo(1, 1, png)  # private chats get everything
            delivered = [(u.message.chat.id, u.message.text or u.message.caption) for u in await bot.get_updates()]
            assert delivered == [(-5, "/stats"), (-5, "@digitbot_emulator_bot what is this?"), (-5, "4"),
                                 (1, None)]
            assert len(await users.messages(-5)) == 6

    asyncio.run(scenario())


def test_photo_dimensions_and_keyboard_size_limits() -> None:
    async def scenario() -> None:
        async with harness() as h:
            await h.users.send_text(3, 3, "hi")
            with pytest.raises(telegram.error.BadRequest, match=r"(?i)photo_invalid_dimensions"):
                await h.bot.send_photo(3, digit_png("1", (40, 900)))  # 22.5 : 1
            buttons = [[InlineKeyboardButton(str(i), callback_data=str(i)) for i in range(11)] for _ in range(10)]
            with pytest.raises(telegram.error.BadRequest, match=r"(?i)reply markup is too long"):
                await h.bot.send_message(3, "many", reply_markup=InlineKeyboardMarkup(buttons))
            sent = await h.bot.send_message(3, "ok", reply_markup=InlineKeyboardMarkup(buttons[:9]))
            assert set(sent.from_user.to_dict()) == {"id", "is_bot", "first_name", "username"}

    asyncio.run(scenario())
