"""The real Application over loopback HTTP against the emulator, an SQLite database in tmp_path,
and photos of digits drawn with OpenCV."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import SecretStr
from sqlalchemy.orm import Session, sessionmaker

from bot.app import AnyApplication, build_application, start_bot, stop_bot
from bot.services import BotServices
from core.recognize import Recognizer
from digitbot.settings import Settings
from emulator import EmulatorClient, EmulatorServer
from storage.db import session_factory, upgrade_to_head


def digits_photo(text: str, *, height: int = 360, fmt: str = ".jpg") -> bytes:
    """Dark handwritten-style digits on slightly uneven white paper, like a phone photo."""
    font, scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, height / 80, max(3, height // 28)
    (w, h), _ = cv2.getTextSize("0", font, scale, thickness)
    gap = w // 2
    width = len(text) * (w + gap) + 2 * w
    yy, xx = np.mgrid[0:height, 0:width]
    paper = (225 + 20 * (xx / width) - 10 * (yy / height)).astype(np.uint8)
    image = cv2.cvtColor(paper, cv2.COLOR_GRAY2BGR)
    x = w
    for ch in text:
        cv2.putText(image, ch, (x, (height + h) // 2), font, scale, (30, 30, 60), thickness, cv2.LINE_AA)
        x += w + gap
    return cv2.imencode(fmt, image)[1].tobytes()


@dataclass
class BotHarness:
    server: EmulatorServer
    users: EmulatorClient
    services: BotServices
    application: AnyApplication
    sessions: sessionmaker[Session]

    async def photo_reply(self, user: int, chat: int, data: bytes, **kwargs: Any) -> dict[str, Any]:
        sent = await self.users.send_photo(user, chat, data, **kwargs)
        return await self.users.wait_for_reply(chat, sent, timeout=20)

    async def command_reply(self, user: int, chat: int, command: str, args: str = "") -> dict[str, Any]:
        sent = await self.users.send_command(user, chat, command, args)
        return await self.users.wait_for_bot_message(chat, after=sent, timeout=20)

    async def text_reply(self, user: int, chat: int, text: str, reply_to: int | None = None) -> dict[str, Any]:
        sent = await self.users.send_text(user, chat, text, reply_to=reply_to)
        return await self.users.wait_for_bot_message(chat, after=sent, timeout=20)

    async def press(self, user: int, chat: int, message_id: int, data: str) -> dict[str, Any]:
        """Press a button and wait for the bot to answer the callback query."""
        query = await self.users.press_button(user, chat, message_id, data)
        for _ in range(200):
            answer = await self.users.callback_answer(query)
            if answer.get("answered"):
                return answer
            await _sleep(0.05)
        raise TimeoutError(f"callback {data!r} not answered")

    async def message(self, chat: int, message_id: int) -> dict[str, Any]:
        return next(m for m in await self.users.messages(chat) if m["message_id"] == message_id)


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def migrated_sessions(tmp_path: Path) -> sessionmaker[Session]:
    url = f"sqlite:///{tmp_path / 'bot.db'}"
    upgrade_to_head(url)
    return session_factory(url)


@contextlib.asynccontextmanager
async def running_bot(tmp_path: Path, recognizer: Recognizer, *, request_finetune: Any = None,
                      sessions: sessionmaker[Session] | None = None, webhook: bool = False
                      ) -> AsyncIterator[BotHarness]:
    """The bot with long polling, or in webhook mode (the emulator POSTs updates to it)."""
    sessions = sessions or migrated_sessions(tmp_path)
    port = _free_port() if webhook else 8443
    async with EmulatorServer(port=0) as server, EmulatorClient(server.base_url) as users:
        settings = Settings(
            telegram_token=SecretStr(server.token), telegram_base_url=server.bot_api_url,
            telegram_base_file_url=server.file_api_url, database_url=str(sessions.kw["bind"].url),
            webhook_url=f"http://127.0.0.1:{port}" if webhook else None, webhook_listen="127.0.0.1",
            webhook_port=port, _env_file=None,  # type: ignore[call-arg]
        )
        services = BotServices(sessions=sessions, recognizer=recognizer, inference_threads=2,
                               request_finetune=request_finetune)
        application = build_application(settings, services=services)
        await start_bot(application, settings)
        try:
            yield BotHarness(server, users, services, application, sessions)
        finally:
            await stop_bot(application)
            services.close()
