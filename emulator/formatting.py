"""Text formatting and markup checks done the way the Bot API does them.

- parse_mode "HTML" is parsed into plain text + entities (offsets in UTF-16 code units), and
  malformed markup is refused with Telegram's "can't parse entities" error, so a bot that
  forgets to escape "<" fails here as it would in production.
- Inline keyboards are validated (callback_data 1-64 bytes: BUTTON_DATA_INVALID).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

from emulator.state import bad_request

MAX_TEXT_CHARS = 4096
MAX_CAPTION_CHARS = 1024
MAX_CALLBACK_DATA_BYTES = 64
MAX_INLINE_BUTTONS = 100

_TAG_ENTITIES = {"b": "bold", "strong": "bold", "i": "italic", "em": "italic", "u": "underline",
                 "ins": "underline", "s": "strikethrough", "strike": "strikethrough",
                 "del": "strikethrough", "code": "code", "pre": "pre", "a": "text_link",
                 "tg-spoiler": "spoiler", "blockquote": "blockquote", "span": "spoiler",
                 "tg-emoji": "custom_emoji"}
_COMMAND = re.compile(r"^/[A-Za-z0-9_]{1,32}(@[A-Za-z0-9_]{3,64})?")


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class _TelegramHtml(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text = ""
        self.entities: list[dict[str, Any]] = []
        self.open: list[tuple[str, int, dict[str, Any]]] = []
        self.error: str | None = None

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = message

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _TAG_ENTITIES:
            self._fail(f'Unsupported start tag "{tag}"')
            return
        entity: dict[str, Any] = {"type": _TAG_ENTITIES[tag]}
        attributes = dict(attrs)
        if tag == "a":
            entity["url"] = attributes.get("href") or ""
        if tag == "span" and attributes.get("class") != "tg-spoiler":
            self._fail('Unsupported start tag "span"')
            return
        if tag == "blockquote" and "expandable" in attributes:
            entity["type"] = "expandable_blockquote"
        self.open.append((tag, utf16_len(self.text), entity))

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1][0] != tag:
            self._fail(f'Unmatched end tag "{tag}"')
            return
        _, start, entity = self.open.pop()
        length = utf16_len(self.text) - start
        if length > 0:
            self.entities.append({**entity, "offset": start, "length": length})

    def handle_data(self, data: str) -> None:
        self.text += data


def parse_text(text: Any, parse_mode: Any, entities: Any, *, what: str = "message text") -> tuple[str, list]:
    """Plain text and entities of a message, as Telegram stores them."""
    if not isinstance(text, str) or not text.strip():
        raise bad_request(f"{what} is empty")
    mode = str(parse_mode or "").lower()
    result_entities: list[dict[str, Any]] = list(entities) if isinstance(entities, list) else []
    if mode == "html":
        if re.search(r"<(?![A-Za-z/])", text) or re.search(r"&(?!#?\w+;)", text):
            raise bad_request("can't parse entities: unescaped \"<\" or \"&\"; use &lt; &gt; &amp;")
        parser = _TelegramHtml()
        parser.feed(text)
        parser.close()
        if parser.error is None and parser.open:
            parser.error = f'Can\'t find end tag corresponding to start tag "{parser.open[-1][0]}"'
        if parser.error:
            raise bad_request(f"can't parse entities: {parser.error}")
        text, result_entities = parser.text, sorted(parser.entities, key=lambda e: e["offset"])
        if not text.strip():
            raise bad_request(f"{what} is empty")
    elif mode not in ("", "markdown", "markdownv2"):
        raise bad_request(f"unsupported parse_mode {parse_mode}")
    return text, result_entities


def check_length(text: str, *, caption: bool = False) -> None:
    limit = MAX_CAPTION_CHARS if caption else MAX_TEXT_CHARS
    if len(text) > limit:
        raise bad_request("message caption is too long" if caption else "message is too long")


def command_entities(text: str) -> list[dict[str, Any]]:
    match = _COMMAND.match(text)
    if not match:
        return []
    return [{"type": "bot_command", "offset": 0, "length": utf16_len(match.group(0))}]


def check_reply_markup(markup: Any) -> dict[str, Any] | None:
    """Validate a reply_markup object; returns it (or None) to store with the message."""
    if markup is None:
        return None
    if not isinstance(markup, dict):
        raise bad_request("can't parse reply keyboard markup JSON object")
    if "inline_keyboard" in markup:
        rows = markup["inline_keyboard"]
        if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
            raise bad_request("field \"inline_keyboard\" of the InlineKeyboardMarkup must be an Array")
        for row in rows:
            for button in row:
                _check_inline_button(button)
        if sum(len(row) for row in rows) > MAX_INLINE_BUTTONS:
            raise bad_request("reply markup is too long")
        return markup
    if "keyboard" in markup or markup.get("remove_keyboard") or markup.get("force_reply"):
        return markup
    raise bad_request("can't parse reply keyboard markup JSON object")


def _check_inline_button(button: Any) -> None:
    if not isinstance(button, dict) or not isinstance(button.get("text"), str):
        raise bad_request("can't parse inline keyboard button: Text buttons are unallowed in the inline keyboard")
    if not button["text"].strip():
        raise bad_request("can't parse inline keyboard button: button text must be non-empty")
    if "callback_data" in button:
        data = button["callback_data"]
        if not isinstance(data, str) or not 1 <= len(data.encode("utf-8")) <= MAX_CALLBACK_DATA_BYTES:
            raise bad_request("BUTTON_DATA_INVALID")
        return
    kinds = ("url", "web_app", "login_url", "switch_inline_query", "switch_inline_query_current_chat",
             "switch_inline_query_chosen_chat", "copy_text", "callback_game", "pay")
    if not any(kind in button for kind in kinds):
        raise bad_request("can't parse inline keyboard button: Text buttons are unallowed in the inline keyboard")
