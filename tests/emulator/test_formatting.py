"""parse_mode=HTML becomes text + entities with UTF-16 offsets; keyboards are validated like Telegram."""

from __future__ import annotations

import pytest

from emulator.formatting import check_reply_markup, command_entities, parse_text, utf16_len
from emulator.state import BotApiError


def test_html_entities_use_utf16_offsets() -> None:
    text, entities = parse_text("📊 <b>我的</b> <i>stats</i> &lt;3 <a href=\"https://x.org\">link</a>", "HTML", None)
    assert text == "📊 我的 stats <3 link"
    assert entities == [
        {"type": "bold", "offset": 3, "length": 2},  # the emoji counts 2 UTF-16 units
        {"type": "italic", "offset": 6, "length": 5},
        {"type": "text_link", "url": "https://x.org", "offset": 15, "length": 4},
    ]
    assert utf16_len("📊") == 2


@pytest.mark.parametrize(("markup", "reason"), [
    ("<b>open", "Can't find end tag"),
    ("<b>x</i>", "Unmatched end tag"),
    ("<script>x</script>", "Unsupported start tag"),
    ("a < b", "unescaped"),
    ("<b></b>", "message text is empty"),
])
def test_bad_html_is_refused(markup: str, reason: str) -> None:
    with pytest.raises(BotApiError, match=reason) as error:
        parse_text(markup, "HTML", None)
    assert error.value.error_code == 400


def test_plain_text_is_kept_as_is_and_commands_are_found() -> None:
    assert parse_text("a < b & c", None, None) == ("a < b & c", [])
    assert command_entities("/stats@digitbot_emulator_bot now") == [
        {"type": "bot_command", "offset": 0, "length": 28}]
    assert command_entities("4271") == []


@pytest.mark.parametrize(("markup", "reason"), [
    ({"inline_keyboard": [[{"text": "x", "callback_data": "é" * 33}]]}, "BUTTON_DATA_INVALID"),  # 66 bytes
    ({"inline_keyboard": [[{"text": "x", "callback_data": ""}]]}, "BUTTON_DATA_INVALID"),
    ({"inline_keyboard": [[{"text": "x"}]]}, "Text buttons are unallowed"),
    ({"inline_keyboard": "no"}, "must be an Array"),
    ({"something": 1}, "can't parse reply keyboard markup"),
])
def test_bad_keyboards_are_refused(markup: dict, reason: str) -> None:
    with pytest.raises(BotApiError, match=reason):
        check_reply_markup(markup)


def test_good_keyboards_pass() -> None:
    keyboard = {"inline_keyboard": [[{"text": "7", "callback_data": "d:1:0:7" + "x" * 57}]]}  # 64 bytes
    assert check_reply_markup(keyboard) == keyboard
    assert check_reply_markup({"remove_keyboard": True}) == {"remove_keyboard": True}
    assert check_reply_markup(None) is None
