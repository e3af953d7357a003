"""Fuzzing: the preprocessing never raises on any bytes, and hypothesis-generated updates pushed
through the live Application (Application.process_update) never reach the error handler."""
# mypy: disable-error-code="index"

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from telegram import Update
from telegram.ext import ContextTypes

from bot.keyboards import parse_forget_action, parse_reading_action
from core.recognize import Recognizer
from core.vision.preprocess import STATUSES, preprocess
from tests.bot.support import digits_photo
from tests.reliability.support import LiveBot, digit_png, new_user_id, reading_id_of

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEED_IMAGES = [digits_photo("42"), digit_png("7"), digits_photo("1", fmt=".png")]


def _check(data: bytes) -> None:
    result = preprocess(data)
    assert result.status in STATUSES
    if result.status == "ok":
        assert 1 <= len(result.digits) <= 12
        assert all(d.image.shape == (28, 28) and d.image.dtype == np.uint8 for d in result.digits)
    else:
        assert result.digits == []


@FUZZ
@given(st.binary(max_size=4096))
def test_preprocess_never_raises_on_any_bytes(data: bytes) -> None:
    _check(data)


@FUZZ
@given(st.sampled_from(SEED_IMAGES), st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 255)), max_size=12),
       st.integers(0, 10**9), st.booleans())
def test_preprocess_never_raises_on_mutated_images(seed: bytes, flips: list[tuple[int, int]], cut: int,
                                                   truncate: bool) -> None:
    data = bytearray(seed)
    for position, value in flips:
        data[position % len(data)] = value
    _check(bytes(data[: max(1, cut % len(data))] if truncate else data))


@FUZZ
@given(arrays(np.uint8, st.tuples(st.integers(1, 80), st.integers(1, 80))), st.sampled_from([".png", ".jpg"]))
def test_preprocess_never_raises_on_any_pixels(pixels: np.ndarray, fmt: str) -> None:
    _check(cv2.imencode(fmt, pixels)[1].tobytes())


@FUZZ
@given(st.text(max_size=80))
def test_callback_data_parsers_accept_only_their_grammar(data: str) -> None:
    action = parse_reading_action(data)
    if action is not None:
        assert data.split(":")[0] in "cdpbu" and action.reading_id >= 0
        assert action.digit is None or 0 <= action.digit <= 9
    forget = parse_forget_action(data)
    assert forget is None or data in (f"f:yes:{forget[1]}", f"f:no:{forget[1]}")


# -- updates through the live Application ---------------------------------------------------------
class _Errors:
    def __init__(self) -> None:
        self.seen: list[BaseException] = []

    async def __call__(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        if context.error is not None:
            self.seen.append(context.error)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, recognizer: Recognizer) -> Iterator[LiveBot]:
    bot = LiveBot(tmp_path_factory.mktemp("fuzz"), recognizer)
    bot.errors = _Errors()  # type: ignore[attr-defined]
    bot.h.application.add_error_handler(bot.errors)  # type: ignore[attr-defined]
    yield bot
    bot.close()


@pytest.fixture(scope="module")
def scene(live: LiveBot) -> dict[str, Any]:
    """A user with a photo read by the bot, another user, and a group with both."""
    async def setup() -> dict[str, Any]:
        h = live.h
        owner, other, group = new_user_id(), new_user_id(), -new_user_id()
        await h.users.set_user(owner, language_code="zh-hans")
        await h.users.set_user(other, language_code="en")
        await h.users.create_group(group, [owner, other])
        await h.command_reply(owner, owner, "start")  # started in private: their group photos are read
        reply = await h.photo_reply(owner, owner, digits_photo("42"))
        group_reply = await h.photo_reply(owner, group, digits_photo("7"))
        help_message = await h.command_reply(owner, owner, "help")
        return {"owner": owner, "other": other, "group": group, "reply": reply, "help": help_message,
                "group_reply": group_reply, "reading": reading_id_of(reply)}
    return live.run(setup())


_TEXT = st.one_of(st.text(min_size=1, max_size=300), st.from_regex(r"[0-9０-９ ]{1,40}", fullmatch=True),
                  st.sampled_from(["/start", "/help", "/stats", "/lang", "/lang zh", "/lang xx", "/train",
                                   "/forget", "/admin", "/admin status", "/nope", "/start@other_bot"]))
_DATA = st.one_of(st.text(min_size=1, max_size=64),
                  st.builds(lambda k, r, p, d: f"{k}:{r}:{p}:{d}", st.sampled_from("cdpbuflx"),
                            st.integers(-5, 10**12), st.integers(-1, 99), st.integers(-1, 11)),
                  st.builds(lambda k, r: f"{k}:{r}", st.sampled_from("cdpbuflx"), st.integers(-5, 10**12)))


@st.composite
def _updates(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    kind = draw(st.sampled_from(["text", "reply", "callback", "document"]))
    who = draw(st.sampled_from(["owner", "other"]))
    where = draw(st.sampled_from(["private", "group"]))
    payload: dict[str, Any] = {"kind": kind, "who": who, "where": where}
    if kind in ("text", "reply"):
        payload["text"] = draw(_TEXT)
        payload["target"] = draw(st.sampled_from(["reply", "help"]))
    elif kind == "callback":
        payload["data"] = draw(_DATA)
    else:
        payload["mime"] = draw(st.sampled_from(["image/png", "image/jpeg", "application/pdf", "image/svg+xml",
                                                 "application/octet-stream", "text/plain", "image/gif"]))
        payload["size"] = draw(st.one_of(st.none(), st.integers(0, 50 * 1024 * 1024)))
        payload["bytes"] = draw(st.binary(max_size=512))
    return kind, payload


def _bot_message(state: Any, user: int, chat: int) -> dict[str, Any]:
    """A plain bot message (no buttons) in this chat: a stale message whose keyboard is gone."""
    return copy.deepcopy(state.add_message(state.chat_for_user(user, chat), state.bot_user, {"text": "old answer"}))


def _message(state: Any, user: int, chat: int, content: dict[str, Any], reply_to: int | None = None) -> dict[str, Any]:
    chat_obj = state.chat_for_user(user, chat)
    return copy.deepcopy(state.add_message(chat_obj, state.users[user], content, reply_to=reply_to))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_updates())
def test_fuzzed_updates_never_reach_the_error_handler(live: LiveBot, scene: dict[str, Any],
                                                      generated: tuple[str, dict[str, Any]]) -> None:
    kind, spec = generated
    h = live.h
    errors: _Errors = live.errors  # type: ignore[attr-defined]

    async def push() -> None:
        state = h.server.state
        user = scene[spec["who"]]
        chat = user if spec["where"] == "private" else scene["group"]
        # Bot messages to reply to / press: the owner's private chat and the group.
        in_owner_chat = chat == scene["owner"]
        bot_message = scene["reply"] if in_owner_chat else scene["group_reply"] if chat < 0 else None
        update: dict[str, Any] = {"update_id": state.next_update_id}
        state.next_update_id += 1
        if kind in ("text", "reply"):
            content: dict[str, Any] = {"text": spec["text"]}
            if spec["text"].startswith("/"):
                content["entities"] = [{"type": "bot_command", "offset": 0,
                                        "length": len(spec["text"].split()[0])}]
            target = scene[spec["target"]]["message_id"] if kind == "reply" and in_owner_chat else None
            update["message"] = _message(state, user, chat, content, reply_to=target)
        elif kind == "callback":
            message = bot_message or _bot_message(state, user, chat)
            update["callback_query"] = {
                "id": f"fuzz{update['update_id']}", "from": dict(state.users[user]),
                "message": copy.deepcopy(state.chats[chat].messages[message["message_id"]]),
                "chat_instance": "1", "data": spec["data"]}
            from emulator.state import CallbackQueryRecord
            state.callback_queries[update["callback_query"]["id"]] = CallbackQueryRecord(
                id=update["callback_query"]["id"], chat_id=chat, message_id=message["message_id"],
                user_id=user, data=spec["data"])
        else:
            stored = state.files.add(spec["bytes"], folder="documents", mime_type=spec["mime"])
            document = {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id,
                        "mime_type": spec["mime"], "file_name": "fuzz.bin"}
            if spec["size"] is not None:
                document["file_size"] = spec["size"]
            update["message"] = _message(state, user, chat, {"document": document})
        await h.application.process_update(Update.de_json(update, h.application.bot))

    errors.seen.clear()
    live.run(push())
    assert errors.seen == [], f"{kind} {spec!r}: {errors.seen!r}"
