"""Webhook mode: after setWebhook, the emulator POSTs each update to the bot's URL, like Telegram.

Updates go out one at a time, in order, with the X-Telegram-Bot-Api-Secret-Token header when a
secret_token was set; a failed delivery (network error, non-2xx) is retried after a pause and
shows in getWebhookInfo's last_error_date / last_error_message.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from emulator.state import EmulatorState

RETRY_PAUSE_S = 1.0
DELIVERY_TIMEOUT_S = 10.0


async def deliver_updates(state: EmulatorState, session: aiohttp.ClientSession) -> None:
    """Runs until the server stops; idle (waiting for changes) while no webhook is set."""
    while not state.closing:
        pending = state.pending_updates(1) if state.webhook_url else []
        if not pending:
            await state.wait_changed(5.0)
            continue
        update, url = pending[0], state.webhook_url
        headers = {"X-Telegram-Bot-Api-Secret-Token": state.webhook_secret} if state.webhook_secret else {}
        error: str | None = None
        try:
            timeout = aiohttp.ClientTimeout(total=DELIVERY_TIMEOUT_S)
            async with session.post(url, json=update, headers=headers, timeout=timeout,
                                    allow_redirects=False) as response:  # stays on loopback
                if not 200 <= response.status < 300:
                    error = f"Wrong response from the webhook: {response.status} {response.reason}"
        except (aiohttp.ClientError, TimeoutError, OSError) as failure:
            error = f"Connection failed: {failure.__class__.__name__}: {failure}"
        if error is None:
            state.confirm_updates(update["update_id"] + 1)
            continue
        state.webhook_last_error = (int(time.time()), error)
        await asyncio.sleep(RETRY_PAUSE_S)
