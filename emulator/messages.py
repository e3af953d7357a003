"""Bot API methods about messages: send, edit, delete, chat actions, files, callback answers."""

from __future__ import annotations

import time

from emulator.files import MAX_DOWNLOAD_BYTES
from emulator.formatting import check_length, check_reply_markup, parse_text
from emulator.params import Params, Upload, method, parse_int
from emulator.state import JSON, BotApiError, Chat, EmulatorState, bad_request

CHAT_ACTIONS = frozenset({"typing", "upload_photo", "record_video", "upload_video", "record_voice",
                          "upload_voice", "upload_document", "choose_sticker", "find_location",
                          "record_video_note", "upload_video_note"})
MAX_PHOTO_UPLOAD_BYTES = 10 * 1024 * 1024  # Telegram's limit for photos a bot sends
NOT_MODIFIED = ("message is not modified: specified new message content and reply markup are exactly "
                "the same as a current content and reply markup of the message")


def _reply_target(chat: Chat, p: Params) -> int | None:
    parameters = p.json("reply_parameters")
    if isinstance(parameters, dict):
        message_id, allow = parameters.get("message_id"), bool(parameters.get("allow_sending_without_reply"))
    else:
        message_id, allow = p.int("reply_to_message_id"), p.bool("allow_sending_without_reply")
    if message_id is None:
        return None
    message_id = parse_int(message_id, "message_id")
    if message_id not in chat.messages:
        if allow:
            return None
        raise bad_request("message to be replied not found")
    return message_id


def _inline_markup(p: Params) -> JSON | None:
    markup = check_reply_markup(p.json("reply_markup"))
    # Telegram echoes only inline keyboards back in the sent Message.
    return markup if markup and "inline_keyboard" in markup else None


def _caption(p: Params) -> JSON:
    if p.get("caption") in (None, ""):
        return {}
    caption, entities = parse_text(p.get("caption"), p.get("parse_mode"), p.json("caption_entities"),
                                   what="message caption")
    check_length(caption, caption=True)
    return {"caption": caption, **({"caption_entities": entities} if entities else {})}


def _send(state: EmulatorState, chat: Chat, p: Params, content: JSON) -> JSON:
    if state.flood is not None:
        state.flood.check(chat.id)
    reply_to = _reply_target(chat, p)
    markup = _inline_markup(p)
    if markup:
        content["reply_markup"] = markup
    return state.add_message(chat, state.bot_user, content, reply_to=reply_to)


@method("sendMessage")
async def send_message(state: EmulatorState, p: Params) -> JSON:
    chat = state.get_chat(p.required("chat_id"))
    text, entities = parse_text(p.get("text"), p.get("parse_mode"), p.json("entities"))
    check_length(text)
    return _send(state, chat, p, {"text": text, **({"entities": entities} if entities else {})})


def _file_from(state: EmulatorState, p: Params, name: str) -> Upload:
    value = p.get(name)
    if isinstance(value, Upload):
        return value
    if not value:
        raise bad_request(f"there is no {name} in the request")
    value = str(value)
    if value.startswith("attach://"):
        attached = p.get(value.removeprefix("attach://"))
        if isinstance(attached, Upload):
            return attached
        raise bad_request(f"wrong remote file identifier specified: can't find attached file {value}")
    stored = state.files.get(value)
    if stored is None:
        if value.startswith(("http://", "https://")):
            raise bad_request("failed to get HTTP URL content (the local emulator has no internet access)")
        raise bad_request("wrong file identifier/HTTP URL specified")
    return Upload(stored.data, stored.file_path.rsplit("/", 1)[-1], stored.mime_type)


@method("sendPhoto")
async def send_photo(state: EmulatorState, p: Params) -> JSON:
    chat = state.get_chat(p.required("chat_id"))
    upload = _file_from(state, p, "photo")
    if len(upload.data) > MAX_PHOTO_UPLOAD_BYTES:
        raise BotApiError(413, "Request Entity Too Large")
    sizes = state.files.add_photo(upload.data)
    if sizes is None:
        raise bad_request("IMAGE_PROCESS_FAILED")
    width, height = sizes[-1]["width"], sizes[-1]["height"]
    if width + height > 10_000 or max(width, height) > 20 * min(width, height):
        raise bad_request("PHOTO_INVALID_DIMENSIONS")
    return _send(state, chat, p, {"photo": sizes, **_caption(p)})


@method("sendDocument")
async def send_document(state: EmulatorState, p: Params) -> JSON:
    chat = state.get_chat(p.required("chat_id"))
    upload = _file_from(state, p, "document")
    document = state.files.add_document(upload.data, file_name=upload.filename, mime_type=upload.content_type)
    return _send(state, chat, p, {"document": document, **_caption(p)})


@method("sendChatAction")
async def send_chat_action(state: EmulatorState, p: Params) -> bool:
    chat = state.get_chat(p.required("chat_id"))
    action = p.required("action")
    if action not in CHAT_ACTIONS:
        raise bad_request("wrong parameter action in request")
    chat.chat_action, chat.chat_action_until = action, time.time() + 5
    state.changed(chat)
    return True


@method("getFile")
async def get_file(state: EmulatorState, p: Params) -> JSON:
    stored = state.files.get(str(p.required("file_id")))
    if stored is None:
        raise bad_request("invalid file_id")
    if stored.file_size > MAX_DOWNLOAD_BYTES:
        raise bad_request("file is too big")
    return {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id,
            "file_size": stored.file_size, "file_path": stored.file_path}


@method("answerCallbackQuery")
async def answer_callback_query(state: EmulatorState, p: Params) -> bool:
    query = state.callback_queries.get(str(p.required("callback_query_id")))
    if query is None or query.answered:
        raise bad_request("query is too old and response timeout expired or query ID is invalid")
    text = p.get("text")
    if text is not None and len(str(text)) > 200:
        raise bad_request("MESSAGE_TOO_LONG")
    query.answered = True
    query.answer = {"text": text, "show_alert": p.bool("show_alert"), "url": p.get("url")}
    state.changed(state.chats.get(query.chat_id))
    return True


def _editable(state: EmulatorState, p: Params) -> tuple[Chat, JSON]:
    if p.get("inline_message_id"):
        raise bad_request("MESSAGE_ID_INVALID")
    chat = state.get_chat(p.required("chat_id"))
    message = state.get_message(chat, p.required("message_id"), missing="message to edit not found")
    if message["from"]["id"] != state.bot_user["id"]:
        raise bad_request("message can't be edited")
    return chat, message


def _apply_edit(state: EmulatorState, chat: Chat, message: JSON, changes: JSON, markup: JSON | None) -> JSON:
    updated = {**message, **changes}
    for key, value in changes.items():
        if not value:
            updated.pop(key)
    updated.pop("reply_markup", None)
    if markup:
        updated["reply_markup"] = markup
    updated.pop("edit_date", None)
    current = {key: value for key, value in message.items() if key != "edit_date"}
    if updated == current:
        raise bad_request(NOT_MODIFIED)
    updated["edit_date"] = int(time.time())
    chat.messages[message["message_id"]] = updated
    state.changed(chat)
    return updated


@method("editMessageText")
async def edit_message_text(state: EmulatorState, p: Params) -> JSON:
    chat, message = _editable(state, p)
    if "text" not in message:
        raise bad_request("there is no text in the message to edit")
    text, entities = parse_text(p.get("text"), p.get("parse_mode"), p.json("entities"))
    check_length(text)
    return _apply_edit(state, chat, message, {"text": text, "entities": entities}, _inline_markup(p))


@method("editMessageCaption")
async def edit_message_caption(state: EmulatorState, p: Params) -> JSON:
    chat, message = _editable(state, p)
    if "text" in message:
        raise bad_request("there is no caption in the message to edit")
    caption = _caption(p)
    changes = {"caption": caption.get("caption"), "caption_entities": caption.get("caption_entities")}
    return _apply_edit(state, chat, message, changes, _inline_markup(p))


@method("editMessageReplyMarkup")
async def edit_message_reply_markup(state: EmulatorState, p: Params) -> JSON:
    chat, message = _editable(state, p)
    return _apply_edit(state, chat, message, {}, _inline_markup(p))


@method("deleteMessage")
async def delete_message(state: EmulatorState, p: Params) -> bool:
    chat = state.get_chat(p.required("chat_id"))
    state.get_message(chat, p.required("message_id"), missing="message to delete not found")
    del chat.messages[int(p.required("message_id"))]
    state.changed(chat)
    return True


