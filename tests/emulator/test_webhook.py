"""Webhook mode: setWebhook makes the emulator POST updates to the bot, like Telegram does."""
# mypy: disable-error-code="union-attr, operator"

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import telegram
from aiohttp import web

from tests.emulator.support import harness


def test_updates_are_posted_with_the_secret_and_retried_after_a_failure() -> None:
    received: list[tuple[str | None, dict[str, Any]]] = []
    failures_left = [1]

    async def receive(request: web.Request) -> web.Response:
        if failures_left[0]:
            failures_left[0] -= 1
            return web.Response(status=500)
        received.append((request.headers.get("X-Telegram-Bot-Api-Secret-Token"), await request.json()))
        return web.Response()

    async def scenario() -> None:
        app = web.Application()
        app.router.add_post("/hook", receive)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with harness() as h:
                assert await h.bot.set_webhook(f"http://127.0.0.1:{port}/hook", secret_token="s3cret")
                with pytest.raises(telegram.error.Conflict):
                    await h.bot.get_updates()
                await h.users.send_text(8, 8, "first")
                await h.users.send_text(8, 8, "second")
                for _ in range(100):
                    if len(received) == 2:
                        break
                    await asyncio.sleep(0.05)
                assert [(secret, body["message"]["text"]) for secret, body in received] == [
                    ("s3cret", "first"), ("s3cret", "second")]
                info = await h.bot.get_webhook_info()
                assert info.pending_update_count == 0 and "500" in info.last_error_message
                with pytest.raises(telegram.error.BadRequest, match=r"(?i)https url"):
                    await h.bot.set_webhook("ftp://example/hook")
                assert await h.bot.delete_webhook()
                await h.users.send_text(8, 8, "polled")
                (update,) = await h.bot.get_updates()
                assert update.message.text == "polled"
        finally:
            await runner.cleanup()

    asyncio.run(scenario())
