"""Act as Telegram users against a running emulator, over HTTP (tests, load generators).

    async with EmulatorClient(server.base_url) as users:
        await users.set_user(42, language_code="zh-hans")
        photo_id = await users.send_photo(42, 42, png_bytes)
        reply = await users.wait_for_bot_message(42, after=photo_id)
        await users.press_button(42, 42, reply["message_id"], "fix:0:7")
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import aiohttp

Message = dict[str, Any]
Predicate = Callable[[Message], bool]


class EmulatorError(RuntimeError):
    def __init__(self, status: int, description: str) -> None:
        super().__init__(f"{status}: {description}")
        self.status, self.description = status, description


class EmulatorClient:
    def __init__(self, base_url: str, *, session: aiohttp.ClientSession | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> EmulatorClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0)  # load tests hold many long polls at once
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        async with self.session.request(method, f"{self.base_url}/emulator/api/{path}", **kwargs) as response:
            payload = await response.json(content_type=None)
        if not payload.get("ok"):
            raise EmulatorError(payload.get("error_code", response.status), payload.get("description", ""))
        return payload["result"]

    # -- users and chats -------------------------------------------------------------------
    async def set_user(self, user_id: int, *, first_name: str | None = None, last_name: str | None = None,
                       username: str | None = None, language_code: str | None = None) -> Message:
        """Create or update a user (language_code e.g. "en", "zh-hans")."""
        body = {"id": user_id, "first_name": first_name, "last_name": last_name,
                "username": username, "language_code": language_code}
        return await self._call("POST", "users", json=body)  # type: ignore[no-any-return]

    async def create_group(self, chat_id: int, member_ids: list[int], *, title: str | None = None) -> Message:
        """A group chat (negative chat_id) with these users as members."""
        body = {"chat_id": chat_id, "title": title, "member_ids": member_ids}
        return await self._call("POST", "groups", json=body)  # type: ignore[no-any-return]

    # -- what users do ---------------------------------------------------------------------
    async def send_photo(self, user_id: int, chat_id: int, data: bytes, *, as_document: bool = False,
                         caption: str | None = None, reply_to: int | None = None,
                         file_name: str = "digits.png", mime_type: str | None = None,
                         keep_original: bool = False) -> int:
        """Send an image as a photo (several PhotoSizes) or as a file (a document); the message id.

        Photos over 1280 px are downscaled like Telegram does, unless `keep_original`."""
        form = aiohttp.FormData()
        form.add_field("user_id", str(user_id))
        form.add_field("as_document", "true" if as_document else "false")
        form.add_field("keep_original", "true" if keep_original else "false")
        form.add_field("file_name", file_name)
        if caption is not None:
            form.add_field("caption", caption)
        if reply_to is not None:
            form.add_field("reply_to", str(reply_to))
        form.add_field("file", data, filename=file_name, content_type=mime_type or "application/octet-stream")
        message = await self._call("POST", f"chats/{chat_id}/file", data=form)
        return int(message["message_id"])

    async def send_text(self, user_id: int, chat_id: int, text: str, *, reply_to: int | None = None) -> int:
        """A text message (a leading /command gets its bot_command entity); the message id."""
        body = {"user_id": user_id, "text": text, "reply_to": reply_to}
        message = await self._call("POST", f"chats/{chat_id}/text", json=body)
        return int(message["message_id"])

    async def send_command(self, user_id: int, chat_id: int, command: str, args: str = "", *,
                           reply_to: int | None = None) -> int:
        text = "/" + command.lstrip("/") + (f" {args}" if args else "")
        return await self.send_text(user_id, chat_id, text, reply_to=reply_to)

    async def press_button(self, user_id: int, chat_id: int, message_id: int, callback_data: str) -> str:
        """Press an inline button of a bot message; the callback query id."""
        body = {"user_id": user_id, "message_id": message_id, "data": callback_data}
        result = await self._call("POST", f"chats/{chat_id}/press", json=body)
        return str(result["callback_query_id"])

    async def callback_answer(self, query_id: str) -> Message:
        """{"answered": bool, "text": ..., "show_alert": ...} of a pressed button."""
        return await self._call("GET", f"callbacks/{query_id}")  # type: ignore[no-any-return]

    # -- what users see --------------------------------------------------------------------
    async def chat(self, chat_id: int, *, since: int | None = None, timeout: float = 25.0) -> Message:
        """The chat snapshot (version, messages, chat_action, callback_answers); with `since`,
        waits until the chat changes after that version or `timeout` passes."""
        params = {} if since is None else {"since": str(since), "timeout": str(timeout)}
        return await self._call("GET", f"chats/{chat_id}/messages", params=params)  # type: ignore[no-any-return]

    async def messages(self, chat_id: int) -> list[Message]:
        """The chat history in Telegram's Message shape (bot messages with reply_markup and edits)."""
        return list((await self.chat(chat_id))["messages"])

    async def wait_for_message(self, chat_id: int, predicate: Predicate, *, timeout: float = 10.0) -> Message:
        """The first message of the chat (current version, edits applied) matching `predicate`."""
        deadline = time.monotonic() + timeout
        version: int | None = None
        while True:
            remaining = deadline - time.monotonic()
            snapshot = await self.chat(chat_id, since=version, timeout=max(0.0, min(remaining, 25.0)))
            for message in snapshot["messages"]:
                if predicate(message):
                    return message  # type: ignore[no-any-return]
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no matching message in chat {chat_id} after {timeout:.1f}s")
            version = snapshot["version"]

    async def wait_for_bot_message(self, chat_id: int, predicate: Predicate | None = None, *,
                                   after: int | None = None, timeout: float = 10.0) -> Message:
        """The first bot message with message_id > `after` matching `predicate`.

        `after` defaults to the newest message in the chat when the call starts, so call it with
        the id of the message you sent (`after=sent_id`) if the bot may already have answered.
        """
        if after is None:
            history = await self.messages(chat_id)
            after = max((message["message_id"] for message in history), default=0)

        def matches(message: Message) -> bool:
            return (message["from"].get("is_bot", False) and message["message_id"] > after
                    and (predicate is None or predicate(message)))

        return await self.wait_for_message(chat_id, matches, timeout=timeout)

    async def wait_for_reply(self, chat_id: int, message_id: int, *, timeout: float = 10.0) -> Message:
        """The bot's reply to one message (its reply_to_message is `message_id`)."""
        return await self.wait_for_bot_message(
            chat_id, lambda m: m.get("reply_to_message", {}).get("message_id") == message_id,
            after=message_id, timeout=timeout)

    async def download(self, file_id: str) -> bytes:
        """The bytes of a file in the emulator (e.g. a photo the bot sent)."""
        async with self.session.get(f"{self.base_url}/emulator/api/files/{file_id}") as response:
            if response.status != 200:
                raise EmulatorError(response.status, "file not found")
            return await response.read()

    async def info(self) -> Message:
        return await self._call("GET", "info")  # type: ignore[no-any-return]

    async def reset(self) -> None:
        """Forget all users, chats, messages, pending updates and files."""
        await self._call("POST", "reset")

    async def wait_until_polled(self, timeout: float = 10.0) -> None:
        """Wait until the bot has taken every pending update (it is up and polling)."""
        deadline = time.monotonic() + timeout
        while (await self.info())["pending_updates"]:
            if time.monotonic() > deadline:
                raise TimeoutError("the bot did not fetch its updates")
            await asyncio.sleep(0.05)
