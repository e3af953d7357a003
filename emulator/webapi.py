"""The client API under /emulator/api/: what users do (used by the web chat, tests, load tests).

Errors have the Bot API's shape: {"ok": false, "error_code": 400, "description": "..."}.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from emulator.files import file_response
from emulator.formatting import MAX_CAPTION_CHARS, MAX_TEXT_CHARS, command_entities
from emulator.params import parse_int, parse_seconds
from emulator.state import JSON, BotApiError, EmulatorState, bad_request

Handler = Callable[[web.Request], Awaitable[Any]]
MAX_WAIT_S = 30.0


def _respond(payload: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(payload, ensure_ascii=False), status=status,
                        content_type="application/json")


def _api(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        # Host and Origin (other web sites must not act as users) are checked for every route by
        # emulator.server.guard.
        try:
            result = await handler(request)
        except BotApiError as error:
            return _respond(error.to_json(), status=error.error_code)
        if isinstance(result, web.StreamResponse):
            return result
        return _respond({"ok": True, "result": result})
    return wrapped


def _int(value: Any, name: str) -> int:
    return parse_int(value, name)


async def _json_body(request: web.Request) -> JSON:
    try:
        body = await request.json()
    except ValueError:
        raise bad_request("the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def _text_content(text: str, *, caption: bool = False) -> JSON:
    key = "caption" if caption else "text"
    if len(text) > (MAX_CAPTION_CHARS if caption else MAX_TEXT_CHARS):
        raise bad_request(f"{key} is too long")
    entities = command_entities(text)
    return {key: text, **({f"{key}_entities" if caption else "entities": entities} if entities else {})}


def chat_snapshot(state: EmulatorState, chat_id: int) -> JSON:
    chat = state.chats.get(chat_id)
    if chat is None:
        return {"version": 0, "chat": None, "messages": [], "chat_action": None, "callback_answers": []}
    answers = [{"callback_query_id": query.id, "message_id": query.message_id, "user_id": query.user_id,
                "data": query.data, "answered": query.answered, **(query.answer or {})}
               for query in state.callback_queries.values() if query.chat_id == chat_id]
    action = chat.chat_action if chat.chat_action_until > time.time() else None
    return {"version": chat.version, "chat": state.chat_json(chat), "messages": list(chat.messages.values()),
            "chat_action": action, "callback_answers": answers[-20:],
            "member_ids": sorted(chat.member_ids)}


def add_client_routes(app: web.Application, state: EmulatorState) -> None:
    async def info(request: web.Request) -> JSON:
        return {"bot": state.bot_user, "users": list(state.users.values()),
                "chats": [state.chat_json(chat) for chat in state.chats.values()],
                "pending_updates": len(state.updates), "version": state.version,
                "commands": state.commands.get(('{"type": "default"}', ""))
                or next(iter(state.commands.values()), [])}

    async def upsert_user(request: web.Request) -> JSON:
        body = await _json_body(request)
        return state.upsert_user(_int(body.get("id"), "id"), first_name=body.get("first_name"),
                                 last_name=body.get("last_name"), username=body.get("username"),
                                 language_code=body.get("language_code"))

    async def create_group(request: web.Request) -> JSON:
        body = await _json_body(request)
        members = [_int(member, "member_ids") for member in body.get("member_ids") or []]
        chat = state.ensure_group(_int(body.get("chat_id"), "chat_id"), title=body.get("title"),
                                  member_ids=members)
        return state.chat_json(chat)

    async def send_text(request: web.Request) -> JSON:
        body = await _json_body(request)
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise bad_request("message text is empty")
        reply_to = body.get("reply_to")
        return state.user_message(_int(body.get("user_id"), "user_id"),
                                  _int(request.match_info["chat_id"], "chat_id"), _text_content(text),
                                  reply_to=None if reply_to is None else _int(reply_to, "reply_to"))

    async def send_file(request: web.Request) -> JSON:
        form = await request.post()
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            raise bad_request("there is no file in the request (multipart field \"file\")")
        data = upload.file.read()
        content: JSON
        if str(form.get("as_document", "")).lower() in ("1", "true"):
            file_name = str(form.get("file_name") or upload.filename or "image")
            content = {"document": state.files.add_document(data, file_name=file_name,
                                                             mime_type=upload.content_type)}
        else:
            keep_original = str(form.get("keep_original", "")).lower() in ("1", "true")
            sizes = state.files.add_photo(data, keep_original=keep_original)
            if sizes is None:
                raise bad_request("this file is not an image Telegram can show as a photo; send it as a file")
            content = {"photo": sizes}
        caption = str(form.get("caption") or "")
        if caption.strip():
            content.update(_text_content(caption, caption=True))
        reply_to = form.get("reply_to")
        return state.user_message(_int(form.get("user_id"), "user_id"),
                                  _int(request.match_info["chat_id"], "chat_id"), content,
                                  reply_to=_int(reply_to, "reply_to") if reply_to else None)

    async def press(request: web.Request) -> JSON:
        body = await _json_body(request)
        query = state.press_button(_int(body.get("user_id"), "user_id"),
                                   _int(request.match_info["chat_id"], "chat_id"),
                                   _int(body.get("message_id"), "message_id"), str(body.get("data", "")))
        return {"callback_query_id": query.id}

    async def callback_answer(request: web.Request) -> JSON:
        query = state.callback_queries.get(request.match_info["query_id"])
        if query is None:
            raise BotApiError(404, "Not Found: no such callback query")
        return {"answered": query.answered, **(query.answer or {})}

    async def messages(request: web.Request) -> JSON:
        """The chat's history; with ?since=VERSION waits (long poll) until something changes."""
        chat_id = _int(request.match_info["chat_id"], "chat_id")
        since = request.query.get("since")
        timeout = parse_seconds(request.query.get("timeout", 25), "timeout", maximum=MAX_WAIT_S)
        if since is not None:
            since_version = _int(since, "since")
            deadline = time.monotonic() + timeout
            while not state.closing:
                chat = state.chats.get(chat_id)
                remaining = deadline - time.monotonic()
                if (chat is not None and chat.version > since_version) or remaining <= 0:
                    break
                await state.wait_changed(remaining)
        return chat_snapshot(state, chat_id)

    async def download(request: web.Request) -> web.StreamResponse:
        stored = state.files.get(request.match_info["file_id"])
        if stored is None:
            raise BotApiError(404, "Not Found")
        return file_response(stored, headers={"Cache-Control": "max-age=3600"})

    async def reset(request: web.Request) -> bool:
        state.reset()
        return True

    routes = [
        ("GET", "/emulator/api/info", info),
        ("POST", "/emulator/api/users", upsert_user),
        ("POST", "/emulator/api/groups", create_group),
        ("POST", "/emulator/api/chats/{chat_id}/text", send_text),
        ("POST", "/emulator/api/chats/{chat_id}/file", send_file),
        ("POST", "/emulator/api/chats/{chat_id}/press", press),
        ("GET", "/emulator/api/chats/{chat_id}/messages", messages),
        ("GET", "/emulator/api/callbacks/{query_id}", callback_answer),
        ("GET", "/emulator/api/files/{file_id}", download),
        ("POST", "/emulator/api/reset", reset),
    ]
    for http_method, path, handler in routes:
        app.router.add_route(http_method, path, _api(handler))
