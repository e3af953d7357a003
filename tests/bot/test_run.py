"""`digitbot run` without a token: migrations, the emulator, the bot and the embedded worker, in-process."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from bot.app import serve
from core.recognize import Recognizer
from digitbot.settings import Settings
from emulator import EmulatorClient
from tests.bot.support import digits_photo


def test_run_serves_the_web_chat_and_answers(tmp_path: Path, recognizer: Recognizer,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "base.pt"
    recognizer.base.save(weights)
    settings = Settings(telegram_token=None, emulator_port=0, data_dir=tmp_path / "var", database_url=None,
                        base_weights=weights, webhook_url=None, _env_file=None)  # type: ignore[call-arg]

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(serve(settings, stop=stop))
        url = None
        for _ in range(600):
            found = re.search(r"Web chat: (http://\S+)", capsys.readouterr().out)
            if found:
                url = found.group(1)
                break
            assert not running.done(), running.exception()
            await asyncio.sleep(0.05)
        assert url is not None, "no web chat URL printed"
        async with EmulatorClient(url.rstrip("/")) as users:
            sent = await users.send_photo(7, 7, digits_photo("5"))
            reply = await users.wait_for_reply(7, sent, timeout=20)
            assert reply["text"].startswith("I read: ")
            sent = await users.send_command(7, 7, "train")
            answer = await users.wait_for_bot_message(7, after=sent, timeout=20)
            assert "labelled digits" in answer["text"]  # the embedded worker answered the request
        stop.set()
        await asyncio.wait_for(running, 30)

    asyncio.run(scenario())
    assert (tmp_path / "var" / "digitbot.db").exists()  # the SQLite file was created and migrated
