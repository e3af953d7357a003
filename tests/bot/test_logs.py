"""DIGITBOT_LOG_FORMAT=json (bot/logs.py): JSON lines with the update id and the hashed sender, the
bot token still redacted."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from telegram import Update
from telegram.ext import ContextTypes, TypeHandler

from bot.handlers.errors import REDACTED, install_redaction
from bot.logs import CONTEXT_GROUP, UPDATE_ID, USER, UpdateContextFilter, json_formatter, log_salt, user_hash
from core.recognize import Recognizer
from tests.bot.support import running_bot

TOKEN = "123456789:AAH-secret-token-value-abcdefghijklmnop"


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """A JSON handler on the root logger, as configure_logging("json") sets one up."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    handler.addFilter(UpdateContextFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    logger = logging.getLogger("tests.json")
    level = logger.level
    logger.setLevel(logging.INFO)
    install_redaction(TOKEN)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        logger.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_a_json_line_carries_the_update_and_the_hashed_user(json_lines: io.StringIO) -> None:
    update_token, user_token = UPDATE_ID.set(77), USER.set(user_hash(42, log_salt(TOKEN)))
    try:
        try:
            raise RuntimeError(f"https://api.telegram.org/bot{TOKEN}/getMe failed")
        except RuntimeError:
            logging.getLogger("tests.json").exception("calling %s", f"bot{TOKEN}")
    finally:
        UPDATE_ID.reset(update_token)
        USER.reset(user_token)
    logging.getLogger("tests.json").info("outside any update")
    first, second = _lines(json_lines)
    assert first["update_id"] == 77 and first["user"] == user_hash(42, log_salt(TOKEN))
    assert first["level"] == "ERROR" and first["logger"] == "tests.json" and "asctime" in first
    assert first["message"] == f"calling bot{REDACTED}"
    assert "RuntimeError" in str(first["exc_info"]) and REDACTED in str(first["exc_info"])
    assert TOKEN not in json_lines.getvalue() and "42" not in str(first["user"])
    assert "update_id" not in second and "user" not in second and second["message"] == "outside any update"


def test_the_bot_sets_the_context_for_each_update(json_lines: io.StringIO, tmp_path: Path,
                                                  recognizer: Recognizer) -> None:
    async def handler(update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        logging.getLogger("tests.json").info("handling")

    async def scenario() -> str:
        async with running_bot(tmp_path, recognizer) as bot:
            bot.application.add_handler(TypeHandler(Update, handler), group=CONTEXT_GROUP + 1)
            await bot.command_reply(1001, 1001, "help")
            await bot.command_reply(1002, 1002, "help")
            return bot.application.bot.token

    token = asyncio.run(scenario())
    lines = [line for line in _lines(json_lines) if line.get("message") == "handling"]
    assert [line["user"] for line in lines] == [user_hash(1001, log_salt(token)), user_hash(1002, log_salt(token))]
    assert all(isinstance(line["update_id"], int) for line in lines) and lines[0]["update_id"] != lines[1]["update_id"]
    assert log_salt(token) != log_salt(token + "x")
