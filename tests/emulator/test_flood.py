"""Optional flood control: Telegram's 429 "retry after", and python-telegram-bot's AIORateLimiter
riding it out so that nothing is lost."""
# mypy: disable-error-code="union-attr"

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from telegram.ext import AIORateLimiter, ExtBot

from emulator import EmulatorServer
from emulator.flood import FloodLimits
from emulator.state import EmulatorState


def test_a_burst_gets_429_with_retry_after() -> None:
    async def scenario() -> None:
        async with EmulatorServer(flood_limits=FloodLimits(per_chat_per_s=1.0, chat_burst=2)) as server, \
                aiohttp.ClientSession() as session:
            server.state.chat_for_user(5, 5)
            url = f"{server.bot_api_url}{server.token}/sendMessage"
            answers = []
            for text in ("one", "two", "three"):
                async with session.post(url, json={"chat_id": 5, "text": text}) as response:
                    answers.append((response.status, await response.json()))
            assert [status for status, _ in answers] == [200, 200, 429]
            assert answers[2][1] == {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 1",
                                     "parameters": {"retry_after": 1}}

    asyncio.run(scenario())


# AIORateLimiter reads RetryAfter.retry_after, which PTB 22 flags as changing type in v23.
@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
def test_the_rate_limiter_retries_and_nothing_is_lost() -> None:
    async def scenario() -> None:
        async with EmulatorServer(flood_limits=FloodLimits(per_chat_per_s=4.0, chat_burst=2)) as server:
            state: EmulatorState = server.state
            state.chat_for_user(6, 6)
            bot = ExtBot(server.token, base_url=server.bot_api_url, rate_limiter=AIORateLimiter(max_retries=3))
            async with bot:
                started = time.monotonic()
                await asyncio.gather(*(bot.send_message(6, f"m{i}") for i in range(5)))
                assert time.monotonic() - started >= 0.9, "the limiter waited for retry_after"
            assert sorted(m["text"] for m in state.chats[6].messages.values()) == [f"m{i}" for i in range(5)]

    asyncio.run(scenario())
