"""Wiring, idempotency, notifications and log redaction (fast; real Application where it matters)."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr
from telegram import Update
from telegram.ext import AIORateLimiter

from bot.app import build_application, webhook_secret
from bot.handlers.errors import REDACTED, RedactTokenFilter, install_redaction
from bot.services import BotServices, NotOwner
from core.model.network import FROZEN_PREFIXES, Checkpoint
from core.recognize import Recognizer
from digitbot.settings import Settings
from storage import repository as repo
from tests.bot.support import digits_photo, migrated_sessions, running_bot

ANN = 42
TOKEN = "123456789:AAH-secret-token-value-abcdefghijklmnop"


def test_application_uses_the_configured_bot_api_server(tmp_path: Path, recognizer: Recognizer) -> None:
    settings = Settings(telegram_token=SecretStr(TOKEN), telegram_base_url="http://api.example:8081/bot",
                        telegram_base_file_url="http://api.example:8081/file/bot",
                        _env_file=None)  # type: ignore[call-arg]
    services = BotServices(sessions=migrated_sessions(tmp_path), recognizer=recognizer)
    application = build_application(settings, services=services)
    assert application.bot.base_url == f"http://api.example:8081/bot{TOKEN}"
    assert application.bot.base_file_url == f"http://api.example:8081/file/bot{TOKEN}"
    assert isinstance(application.bot.rate_limiter, AIORateLimiter)
    assert application.concurrent_updates > 1
    assert application.job_queue is not None
    assert len(application.error_handlers) == 1
    assert application.bot.defaults is not None and application.bot.defaults.allow_sending_without_reply
    services.close()
    with pytest.raises(ValueError, match="token"):
        build_application(Settings(_env_file=None), services=services)  # type: ignore[call-arg]
    secret = webhook_secret(TOKEN)
    assert secret == webhook_secret(TOKEN) and TOKEN not in secret and len(secret) <= 256


def test_the_same_update_twice_stores_and_answers_once(tmp_path: Path, recognizer: Recognizer) -> None:
    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer) as h:
            sent = await h.users.send_photo(ANN, ANN, digits_photo("8"))
            await h.users.wait_for_reply(ANN, sent, timeout=20)
            message = next(m for m in await h.users.messages(ANN) if m["message_id"] == sent)
            update = Update.de_json({"update_id": 10**9, "message": message}, h.application.bot)
            await h.application.process_update(update)
            await h.application.process_update(update)  # redelivered: nothing new stored or sent
            with h.sessions() as session:
                user = repo.get_user(session, telegram_id=ANN)
                assert user is not None and repo.count_samples(session, user_id=user.id) == 2
            replies = [m for m in await h.users.messages(ANN)
                       if m["from"]["is_bot"] and m.get("reply_to_message", {}).get("message_id") == sent]
            assert len(replies) == 2  # the original delivery and the first replay

            reading = int(replies[-1]["reply_markup"]["inline_keyboard"][0][0]["callback_data"].split(":")[1])
            card = await h.services.label_digit(ANN, reading, 0, 4, update_id=10**9 + 1)
            again = await h.services.undo(ANN, reading, update_id=10**9 + 1)  # a replayed tap: ignored
            assert card.labels == again.labels == [4]
            with pytest.raises(NotOwner):
                await h.services.label_digit(ANN + 1, reading, 0, 1, update_id=10**9 + 2)

    asyncio.run(scenario())


def test_webhook_mode_answers_photos(tmp_path: Path, recognizer: Recognizer) -> None:
    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer, webhook=True) as h:
            info = await h.application.bot.get_webhook_info()
            assert info.url.endswith("/telegram")
            reply = await h.photo_reply(ANN, ANN, digits_photo("4"))
            assert reply["text"].startswith("I read: ")

    asyncio.run(scenario())


def test_an_unexpected_failure_gets_a_friendly_answer(tmp_path: Path, recognizer: Recognizer,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object) -> None:
        raise RuntimeError("recognizer exploded")

    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer) as h:
            monkeypatch.setattr(h.services, "_read_photo", broken)
            await h.users.set_user(ANN, first_name="Ann", language_code="zh-hans")
            sent = await h.users.send_photo(ANN, ANN, digits_photo("4"))
            answer = await h.users.wait_for_bot_message(ANN, after=sent, timeout=10)
            assert answer["text"] == "抱歉，出了点问题，请再试一次。"

    asyncio.run(scenario())


@dataclass(frozen=True)
class _Request:
    accepted: bool
    reason: str
    job_id: int | None = None
    labels: int = 0
    needed: int = 0


def test_train_and_promotion_notice(tmp_path: Path, recognizer: Recognizer) -> None:
    asked: list[int] = []

    def request(telegram_id: int) -> _Request:
        asked.append(telegram_id)
        return _Request(True, "queued", 1, labels=12, needed=5)

    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer, request_finetune=request) as h:
            await h.users.set_user(ANN, first_name="Ann", language_code="zh-hans")
            reply = await h.command_reply(ANN, ANN, "train")
            assert asked == [ANN] and "12" in reply["text"] and reply["text"].startswith("已提交训练请求")
            summary = {"version": 2, "labels": 40, "accuracy_before": 0.8, "accuracy_after": 0.95,
                       "mnist_accuracy": 0.991}
            # the worker calls this from its own thread
            threading.Thread(target=h.services.notices.tell, args=(ANN, summary)).start()
            notice = await h.users.wait_for_bot_message(ANN, lambda m: "v2" in m.get("text", ""),
                                                        after=reply["message_id"], timeout=10)
            assert "95%" in notice["text"] and "80%" in notice["text"] and "99%" in notice["text"]
            assert notice["text"].startswith("🎉 你的个人模型 v2 已启用")  # in the language the user writes
            # promoted on a tie (same held-out accuracy, much surer): no "before: 100%" riddle
            tie = dict(summary, version=3, accuracy_before=1.0, accuracy_after=1.0)
            threading.Thread(target=h.services.notices.tell, args=(ANN, tie)).start()
            notice = await h.users.wait_for_bot_message(ANN, lambda m: "v3" in m.get("text", ""),
                                                        after=notice["message_id"], timeout=10)
            assert "和之前一样（100%）" in notice["text"] and "之前：" not in notice["text"]

    asyncio.run(scenario())


def test_token_is_redacted_from_messages_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.redaction")
    redactor = RedactTokenFilter(TOKEN)
    caplog.handler.addFilter(redactor)
    try:
        try:
            raise RuntimeError(f"POST https://api.telegram.org/bot{TOKEN}/getUpdates failed")
        except RuntimeError:
            logger.exception("request to %s failed", f"https://api.telegram.org/bot{TOKEN}/sendMessage")
        logger.warning("another token 987654321:ZZZ-abcdefghijklmnopqrstuvwxyz012345 leaked")
        logger.warning("GET http://127.0.0.1/file/bot%s/photos/1.jpg", TOKEN.replace(":", "%3A"))
    finally:
        caplog.handler.removeFilter(redactor)
    text = caplog.text
    assert TOKEN not in text and "987654321:ZZZ" not in text and TOKEN.split(":")[1] not in text
    assert text.count(REDACTED) >= 4


def test_token_is_redacted_for_handlers_added_after_start_up() -> None:
    """Redaction happens as the record is created: a handler added later, on the root or on any other
    logger (whose records never pass the root handlers' filters), never sees the token."""
    factory, root = logging.getLogRecordFactory(), logging.getLogger()
    before = list(root.handlers)
    install_redaction(TOKEN)
    stream = io.StringIO()
    late = logging.StreamHandler(stream)
    late.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("test.redaction.late")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(late)
    logger.propagate = False
    root.addHandler(late)
    try:
        logger.info("token %s in the message", TOKEN)
        logger.info(f"https://api.telegram.org/bot{TOKEN}/getMe in the format string")
        logger.warning("GET /file/bot%s/photos/1.jpg", TOKEN.replace(":", "%3A"))
        logger.info("not enough arguments for %s and %s", TOKEN)  # the handler reports it: no token
        try:
            raise RuntimeError(f"POST https://api.telegram.org/bot{TOKEN}/getUpdates failed")
        except RuntimeError:
            logger.exception("request failed")
            logging.getLogger("telegram.ext").error("from a library", exc_info=True)
        logger.info("where", stack_info=True)
    finally:
        logger.removeHandler(late)
        root.removeHandler(late)
        logger.propagate = True
        logging.setLogRecordFactory(factory)
        for handler in before:
            for added in [f for f in handler.filters if isinstance(f, RedactTokenFilter)]:
                handler.removeFilter(added)
    text = stream.getvalue()
    assert "getUpdates failed" in text and "from a library" in text and "RuntimeError" in text
    assert TOKEN not in text and TOKEN.split(":")[1] not in text
    assert text.count(REDACTED) >= 6


def test_the_personal_model_answers_and_is_recorded(tmp_path: Path, recognizer: Recognizer) -> None:
    head = {k: v for k, v in recognizer.base.state_dict.items() if not k.startswith(FROZEN_PREFIXES)}
    # threshold 0: the personal model's answer is always used
    personal = Checkpoint(state_dict=head, meta={"kind": "personal", "temperature": 1.0, "threshold": 0.0})

    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer) as h:
            with h.sessions.begin() as session:
                user = repo.get_or_create_user(session, telegram_id=ANN, language="en")
                version = repo.add_model_version(session, user_id=user.id, parent_id=None,
                                                 weights=personal.to_bytes(), metrics={})
                repo.promote_model_version(session, user_id=user.id, version_id=version.id)
                version_id = version.id
            reply = await h.photo_reply(ANN, ANN, digits_photo("6"))
            assert "Your personal model v1 answered." in reply["text"]
            reading = int(reply["reply_markup"]["inline_keyboard"][0][0]["callback_data"].split(":")[1])
            with h.sessions() as session:
                view = repo.get_reading(session, telegram_id=ANN, reading_id=reading)
            assert view is not None
            assert [(d.source, d.model_version_id) for d in view.digits] == [("personal", version_id)]

    asyncio.run(scenario())
