"""One live bot (emulator + real Application over loopback HTTP + SQLite) shared by a whole test
module: it runs on an event loop in a background thread, tests hand it coroutines with `run`.

Also: hostile inputs (bombs, truncated files, oversized documents) built in memory, and forged
updates pushed straight into the emulator (things a normal client cannot send)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import itertools
import os
import struct
import sys
import threading
import uuid
import zlib
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import torch
from PIL import Image

from bot.i18n import resolve_language, translator
from core.model.network import DEFAULT_WEIGHTS, Checkpoint, DigitNet, load_base
from core.recognize import Recognizer
from emulator.state import CallbackQueryRecord
from storage import repository as repo
from tests.bot.support import BotHarness, digits_photo, running_bot

T = TypeVar("T")
_user_ids = itertools.count(500_001)


def base_checkpoint() -> Checkpoint:
    """The shipped weights if present; these tests check answers to bad input, not accuracy."""
    for candidate in (os.environ.get("DIGITBOT_BASE_WEIGHTS"), DEFAULT_WEIGHTS):
        if candidate and Path(candidate).exists():
            with contextlib.suppress(ValueError, RuntimeError, OSError):
                return load_base(candidate)
    torch.manual_seed(0)
    return Checkpoint(state_dict=DigitNet().eval().state_dict())


def new_user_id() -> int:
    return next(_user_ids)


class LiveBot:
    """`running_bot` kept open on a background event loop for many tests."""

    def __init__(self, tmp_path: Path, recognizer: Recognizer, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="live-bot", daemon=True)
        self._thread.start()
        self._context = running_bot(tmp_path, recognizer, **kwargs)
        self.h: BotHarness = self.run(self._context.__aenter__(), timeout=120)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self._context.__aexit__(None, None, None), timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def expected(language_code: str, message: str, **values: Any) -> str:
    """What the bot says in this Telegram language (the gettext catalogue's translation)."""
    return translator(resolve_language(language_code))(message, **values)


def stored_readings(h: BotHarness, telegram_id: int) -> int:
    with h.sessions() as session:
        return repo.user_stats(session, telegram_id=telegram_id).samples


def current_labels(h: BotHarness, telegram_id: int, reading_id: int) -> list[int | None]:
    with h.sessions() as session:
        view = repo.get_reading(session, telegram_id=telegram_id, reading_id=reading_id)
        assert view is not None
        return [d.label for d in view.digits]


def reading_id_of(reply: dict[str, Any]) -> int:
    return int(reply["reply_markup"]["inline_keyboard"][0][0]["callback_data"].split(":")[1])


def buttons(message: dict[str, Any]) -> list[str]:
    return [b["callback_data"] for row in message.get("reply_markup", {}).get("inline_keyboard", []) for b in row]


# -- hostile and odd images ------------------------------------------------------------------------
def png_bytes(gray: np.ndarray) -> bytes:
    return cv2.imencode(".png", gray)[1].tobytes()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(side: int = 30_000) -> bytes:
    """A valid 1-bit PNG of side x side white pixels: ~100 KB on disk, 900 megapixels decoded."""
    row = b"\x00" + b"\xff" * (side // 8 + (1 if side % 8 else 0))
    packer = zlib.compressobj(9)
    rows_per_call = 1000
    body = b"".join(packer.compress(row * min(rows_per_call, side - start))
                    for start in range(0, side, rows_per_call)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def padded_png(image_png: bytes, total_bytes: int) -> bytes:
    """A valid PNG of `total_bytes`: the image plus an ancillary chunk of filler before IEND."""
    iend = image_png.rindex(b"IEND") - 4
    filler = total_bytes - len(image_png) - 12
    return image_png[:iend] + _chunk(b"zjNk", os.urandom(16) * (filler // 16) + b"\x00" * (filler % 16)) \
        + image_png[iend:]


def gif_bytes(frames: list[np.ndarray]) -> bytes:
    images = [Image.fromarray(frame) for frame in frames]
    out = io.BytesIO()
    images[0].save(out, format="GIF", save_all=len(images) > 1, append_images=images[1:], duration=100, loop=0)
    return out.getvalue()


def blank_page(width: int = 1200, height: int = 900, seed: int = 0) -> bytes:
    """Paper with gentle light falloff and sensor noise, no ink."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    paper = 215 + 25 * (xx / width) - 15 * (yy / height) + rng.normal(0, 2.0, (height, width))
    return cv2.imencode(".jpg", np.clip(paper, 0, 255).astype(np.uint8))[1].tobytes()


def digit_png(text: str = "7") -> bytes:
    return digits_photo(text, fmt=".png")


# -- things only a hostile client or a redelivering server sends -----------------------------------
def forged_press(state: Any, user_id: int, chat_id: int, message_id: int, data: str) -> str:
    """A callback query with arbitrary callback_data on a real message (the emulator's own
    press_button only allows the data of a button the message really has)."""
    chat = state.chat_for_user(user_id, chat_id)
    message = state.get_message(chat, message_id, missing="message not found")
    query = CallbackQueryRecord(id=str(next(state._callback_ids)), chat_id=chat.id,
                                message_id=message_id, user_id=user_id, data=data)
    state.callback_queries[query.id] = query
    state.push_update("callback_query", {
        "id": query.id, "from": dict(state.users[user_id]), "message": copy.deepcopy(message),
        "chat_instance": str(abs(chat.id) * 7919), "data": data})
    return query.id


def push_twice(state: Any, kind: str, payload: dict[str, Any]) -> None:
    """One update reaching the bot twice with the same update_id (a redelivery)."""
    update = {"update_id": state.next_update_id, kind: copy.deepcopy(payload)}
    state.next_update_id += 1
    state.updates.extend([update, copy.deepcopy(update)])
    state.changed()


def deliver_twice(state: Any, user_id: int, chat_id: int, content: dict[str, Any]) -> int:
    """A user message whose update reaches the bot twice; its message id."""
    chat = state.chat_for_user(user_id, chat_id)
    message = state.add_message(chat, state.users[user_id], content)
    push_twice(state, "message", message)
    return int(message["message_id"])


def press_twice(state: Any, user_id: int, chat_id: int, message_id: int, data: str) -> str:
    """A button press whose callback_query update reaches the bot twice; the query id."""
    chat = state.chat_for_user(user_id, chat_id)
    message = state.get_message(chat, message_id, missing="message not found")
    query = CallbackQueryRecord(id=str(next(state._callback_ids)), chat_id=chat.id,
                                message_id=message_id, user_id=user_id, data=data)
    state.callback_queries[query.id] = query
    push_twice(state, "callback_query", {
        "id": query.id, "from": dict(state.users[user_id]), "message": copy.deepcopy(message),
        "chat_instance": str(abs(chat.id) * 7919), "data": data})
    return query.id


# -- a bot process held mid-update, to be SIGKILLed there (tests/reliability/test_bot_restart.py) --------
HOLD_ENV, HOLD_DIR_ENV = "DIGITBOT_TEST_HOLD", "DIGITBOT_TEST_HOLD_DIR"


def _held(kind: str) -> None:
    """Leave a marker file for the test, then block this thread until the process is killed."""
    where = Path(os.environ[HOLD_DIR_ENV])
    (where / f"{kind}-{uuid.uuid4().hex}").touch()
    threading.Event().wait()


def install_holds(holds: set[str]) -> None:
    """Make the bot stop dead inside its handlers: "read" in photo recognition (nothing stored yet),
    "label" inside a label's transaction (nothing stored yet), "stored" right after a photo's reading
    was committed (before the answer is sent), "answered" right after a photo's answer was sent
    (before it is linked to its reading)."""
    from bot.services import BotServices

    if "read" in holds:
        Recognizer.read = lambda self, *args, **kwargs: _held("read")  # type: ignore[assignment,method-assign,misc]
    if "label" in holds:
        run_labelling = BotServices._run_labelling

        def held_labelling(self: BotServices, telegram_id: int, reading_id: int, change: Any,
                           update_id: int | None, **kwargs: Any) -> Any:
            if change is not None:
                _held("label")
            return run_labelling(self, telegram_id, reading_id, change, update_id, **kwargs)
        BotServices._run_labelling = held_labelling  # type: ignore[method-assign,assignment]
    if "stored" in holds:
        read_photo = BotServices.read_photo

        async def held_read_photo(self: BotServices, **kwargs: Any) -> Any:
            outcome = await read_photo(self, **kwargs)
            await asyncio.to_thread(_held, "stored")
            return outcome
        BotServices.read_photo = held_read_photo  # type: ignore[method-assign,assignment]
    if "answered" in holds:
        attach_message = BotServices.attach_message

        async def held_attach_message(self: BotServices, reading_id: int, chat_id: int, message_id: int) -> None:
            await asyncio.to_thread(_held, "answered")
            await attach_message(self, reading_id, chat_id, message_id)
        BotServices.attach_message = held_attach_message  # type: ignore[method-assign,assignment]


def held_bot_main(argv: list[str]) -> int:
    """`python -m tests.reliability.support run ...`: `digitbot` with the holds named in
    $DIGITBOT_TEST_HOLD (comma-separated) installed; markers go to $DIGITBOT_TEST_HOLD_DIR."""
    from digitbot.cli import main

    install_holds({hold for hold in os.environ.get(HOLD_ENV, "").split(",") if hold})
    return main(argv)


async def wait_answer(h: BotHarness, query_id: str, timeout: float = 20) -> dict[str, Any]:
    for _ in range(int(timeout / 0.05)):
        answer = await h.users.callback_answer(query_id)
        if answer.get("answered"):
            return answer
        await asyncio.sleep(0.05)
    raise TimeoutError("callback not answered")


if __name__ == "__main__":
    sys.exit(held_bot_main(sys.argv[1:]))
