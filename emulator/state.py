"""In-memory state of the local Bot API emulator: users, chats, messages, the update queue.

Everything is kept in Telegram's JSON shapes (plain dicts), so the Bot API routes can return
them as they are and python-telegram-bot parses them with `de_json`. All methods run on the
event loop thread; `changed()` wakes long-polling waiters (getUpdates and the web chat).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from emulator.files import FileStore

if TYPE_CHECKING:
    from emulator.flood import FloodControl

JSON = dict[str, Any]

# Update types Telegram sends when allowed_updates is empty (it leaves these three out).
DEFAULT_EXCLUDED_UPDATES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})
MAX_QUEUED_UPDATES = 100_000
# The User fields a Message's "from" carries (getMe's can_* fields are not among them).
_USER_FIELDS = frozenset({"id", "is_bot", "first_name", "last_name", "username", "language_code"})


class BotApiError(Exception):
    """An error answer in Telegram's shape: {"ok": false, "error_code": ..., "description": ...}."""

    def __init__(self, error_code: int, description: str, *, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.error_code = error_code
        self.description = description
        self.retry_after = retry_after

    def to_json(self) -> JSON:
        payload: JSON = {"ok": False, "error_code": self.error_code, "description": self.description}
        if self.retry_after is not None:
            payload["parameters"] = {"retry_after": self.retry_after}
        return payload


def bad_request(reason: str) -> BotApiError:
    return BotApiError(400, f"Bad Request: {reason}")


@dataclass
class Chat:
    id: int
    type: str  # "private" | "group"
    title: str | None = None
    member_ids: set[int] = field(default_factory=set)
    messages: dict[int, JSON] = field(default_factory=dict)  # message_id -> message, in order
    next_message_id: int = 1
    version: int = 0  # bumped on every change; the web chat long-polls on it
    chat_action: str | None = None
    chat_action_until: float = 0.0


@dataclass
class CallbackQueryRecord:
    id: str
    chat_id: int
    message_id: int
    user_id: int
    data: str
    answered: bool = False
    answer: JSON | None = None  # text, show_alert, url, cache_time


class EmulatorState:
    def __init__(self, token: str, *, bot_username: str = "digitbot_emulator_bot") -> None:
        self.token = token
        bot_id = int(token.split(":", 1)[0]) if token.split(":", 1)[0].isdigit() else 1000001
        self.bot_user: JSON = {
            "id": bot_id, "is_bot": True, "first_name": "digitbot", "username": bot_username,
            "can_join_groups": True, "can_read_all_group_messages": True,
            "supports_inline_queries": False, "can_connect_to_business": False,
            "has_main_web_app": False,
        }
        self.files = FileStore()
        self.closing = False  # set when the server stops: long polls return at once
        self.flood: FloodControl | None = None  # Telegram-like 429s when set
        self.group_privacy = False  # Telegram's privacy mode for groups (BotFather's default is on)
        self.reset()

    def reset(self) -> None:
        """Forget every user, chat, message, pending update and file (bot commands stay)."""
        self.users: dict[int, JSON] = {}
        self.chats: dict[int, Chat] = {}
        self.updates: list[JSON] = []
        self.callback_queries: dict[str, CallbackQueryRecord] = {}
        # (chat_id, message_id) -> time.perf_counter() when the message was stored (benchmarks)
        self.created_at: dict[tuple[int, int], float] = {}
        self.files.clear()
        if not hasattr(self, "version"):  # counters stay monotonic across resets: a running bot
            self.version = 0              # has confirmed update ids and pollers hold versions
            self.next_update_id = 10_000
            self.poll_generation = 0  # a newer getUpdates call ends an older one with 409 Conflict
            self._callback_ids = itertools.count(7_000_000_000_001)
            self._changed = asyncio.Event()
            self.allowed_updates: frozenset[str] | None = None
            self.commands: dict[tuple[str, str], list[JSON]] = {}
            self.webhook_url = ""
            self.webhook_secret = ""
            self.webhook_last_error: tuple[int, str] | None = None
        self.changed()

    # -- change notification ---------------------------------------------------------------
    def changed(self, chat: Chat | None = None) -> None:
        self.version += 1
        if chat is not None:
            chat.version = self.version
        self.notify()

    def notify(self) -> None:
        """Wake every long-polling waiter so it re-checks what it waits for."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, timeout: float) -> None:
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    # -- users and chats -------------------------------------------------------------------
    def upsert_user(self, user_id: int, *, first_name: str | None = None, last_name: str | None = None,
                    username: str | None = None, language_code: str | None = None) -> JSON:
        if user_id <= 0 or user_id == self.bot_user["id"]:
            raise bad_request("user_id must be a positive id that is not the bot's")
        user = self.users.setdefault(user_id, {"id": user_id, "is_bot": False,
                                               "first_name": f"User {user_id}", "language_code": "en"})
        for key, value in (("first_name", first_name), ("last_name", last_name),
                           ("username", username), ("language_code", language_code)):
            if value:
                user[key] = value
        return user

    def ensure_group(self, chat_id: int, *, title: str | None = None,
                     member_ids: list[int] | None = None) -> Chat:
        if chat_id >= 0:
            raise bad_request("group chat ids are negative")
        chat = self.chats.setdefault(chat_id, Chat(id=chat_id, type="group", title=f"Group {-chat_id}"))
        if title:
            chat.title = title
        for member in member_ids or []:
            self.upsert_user(member)
            chat.member_ids.add(member)
        self.changed(chat)
        return chat

    def chat_for_user(self, user_id: int, chat_id: int) -> Chat:
        """The chat a user writes in: their private chat (chat_id == user_id) or a group."""
        self.upsert_user(user_id)
        if chat_id == user_id:
            return self.chats.setdefault(chat_id, Chat(id=chat_id, type="private", member_ids={user_id}))
        if chat_id < 0:
            chat = self.chats.get(chat_id) or self.ensure_group(chat_id)
            chat.member_ids.add(user_id)
            return chat
        raise bad_request("a user can write only in their own private chat (chat_id == user_id) or a group")

    def get_chat(self, chat_id: Any) -> Chat:
        """A chat addressed by the bot; unknown ids answer Telegram's "chat not found"."""
        try:
            chat = self.chats.get(int(chat_id))
        except (TypeError, ValueError, OverflowError):  # inf from a JSON body
            chat = None
        if chat is None:
            raise bad_request("chat not found")
        return chat

    def chat_json(self, chat: Chat) -> JSON:
        if chat.type == "private":
            user = self.users[chat.id]
            keys = ("first_name", "last_name", "username")
            return {"id": chat.id, "type": "private", **{k: user[k] for k in keys if k in user}}
        return {"id": chat.id, "type": "group", "title": chat.title}

    # -- messages --------------------------------------------------------------------------
    def add_message(self, chat: Chat, sender: JSON, content: JSON, *, reply_to: int | None = None) -> JSON:
        author = {key: value for key, value in sender.items() if key in _USER_FIELDS}
        message: JSON = {"message_id": chat.next_message_id, "from": author,
                         "chat": self.chat_json(chat), "date": int(time.time())}
        if reply_to is not None:
            replied = chat.messages.get(reply_to)
            if replied is not None:
                snapshot = copy.deepcopy(replied)
                snapshot.pop("reply_to_message", None)
                message["reply_to_message"] = snapshot
        message.update(content)
        self.created_at[(chat.id, message["message_id"])] = time.perf_counter()
        chat.next_message_id += 1
        chat.messages[message["message_id"]] = message
        if sender["id"] == self.bot_user["id"]:
            chat.chat_action = None  # a sent message ends the "typing…" indicator, as in Telegram
        self.changed(chat)
        return message

    def get_message(self, chat: Chat, message_id: Any, *, missing: str) -> JSON:
        try:
            message = chat.messages.get(int(message_id))
        except (TypeError, ValueError, OverflowError):  # inf from a JSON body
            message = None
        if message is None:
            raise bad_request(missing)
        return message

    def user_message(self, user_id: int, chat_id: int, content: JSON, *, reply_to: int | None = None) -> JSON:
        """A message written by a user: stored in the chat and queued as an update for the bot."""
        chat = self.chat_for_user(user_id, chat_id)
        if reply_to is not None and reply_to not in chat.messages:
            raise bad_request("message to be replied not found")
        message = self.add_message(chat, self.users[user_id], content, reply_to=reply_to)
        if chat.type == "private" or not self.group_privacy or self._addressed_to_bot(message):
            self.push_update("message", message)
        return message

    def _addressed_to_bot(self, message: JSON) -> bool:
        """Privacy mode: in groups the bot gets only commands, replies to it and mentions of it."""
        text = message.get("text") or message.get("caption") or ""
        replied = message.get("reply_to_message", {}).get("from", {})
        return (text.startswith("/") or replied.get("id") == self.bot_user["id"]
                or f"@{self.bot_user['username']}".lower() in text.lower())

    def press_button(self, user_id: int, chat_id: int, message_id: int, data: str) -> CallbackQueryRecord:
        chat = self.chat_for_user(user_id, chat_id)
        message = self.get_message(chat, message_id, missing="message not found")
        buttons = [button for row in message.get("reply_markup", {}).get("inline_keyboard", [])
                   for button in row]
        if not any(button.get("callback_data") == data for button in buttons):
            raise bad_request("the message has no inline button with this callback_data")
        query = CallbackQueryRecord(id=str(next(self._callback_ids)), chat_id=chat.id,
                                    message_id=message["message_id"], user_id=user_id, data=data)
        self.callback_queries[query.id] = query
        self.push_update("callback_query", {
            "id": query.id, "from": dict(self.users[user_id]), "message": copy.deepcopy(message),
            "chat_instance": str(abs(chat.id) * 7919 + self.bot_user["id"]), "data": data,
        })
        self.changed(chat)
        return query

    # -- updates ---------------------------------------------------------------------------
    def push_update(self, kind: str, payload: JSON) -> None:
        if not self._update_allowed(kind):
            return
        self.updates.append({"update_id": self.next_update_id, kind: copy.deepcopy(payload)})
        self.next_update_id += 1
        del self.updates[:-MAX_QUEUED_UPDATES]
        self.changed()

    def _update_allowed(self, kind: str) -> bool:
        if self.allowed_updates:
            return kind in self.allowed_updates
        return kind not in DEFAULT_EXCLUDED_UPDATES

    def confirm_updates(self, offset: int) -> None:
        """getUpdates' offset: updates with a smaller id are confirmed and forgotten."""
        if offset < 0:  # a negative offset keeps only the last -offset updates
            del self.updates[:offset]
        else:
            self.updates = [update for update in self.updates if update["update_id"] >= offset]

    def pending_updates(self, limit: int) -> list[JSON]:
        return [update for update in self.updates if self._update_allowed(_update_kind(update))][:limit]


def _update_kind(update: JSON) -> str:
    return next(key for key in update if key != "update_id")
