from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.i18n import translator
from bot.keyboards import (
    MAX_CALLBACK_BYTES,
    ReadingAction,
    digit_picker_keyboard,
    forget_keyboard,
    language_keyboard,
    parse_forget_action,
    parse_language_action,
    parse_reading_action,
    reading_keyboard,
)

_ = translator("en")


def _all_data(markup) -> list[str]:  # type: ignore[no-untyped-def]
    return [button.callback_data for row in markup.inline_keyboard for button in row]


def test_single_digit_keyboard_has_confirm_and_every_digit() -> None:
    markup = reading_keyboard(17, [4], [None], _)
    data = _all_data(markup)
    assert data[0] == "c:17"
    assert data[1:] == [f"d:17:0:{d}" for d in range(10)]
    assert "4" in markup.inline_keyboard[0][0].text


def test_recorded_digit_is_marked_and_undo_offered() -> None:
    markup = reading_keyboard(17, [4], [9], _)
    texts = [b.text for row in markup.inline_keyboard for b in row]
    assert "• 9 •" in texts and "4" in texts
    assert _all_data(markup)[-1] == "u:17"


def test_row_of_digits_gets_one_button_per_position() -> None:
    markup = reading_keyboard(5, [4, 2, 7, 1], [None, None, 9, None], _)
    data = _all_data(markup)
    assert data[:5] == ["c:5", "p:5:0", "p:5:1", "p:5:2", "p:5:3"]
    assert markup.inline_keyboard[1][2].text.startswith("#3: 9")  # shows the recorded digit
    assert markup.inline_keyboard[0][0].text == "✅ 4291 is right"
    assert data[-1] == "u:5"
    picker = _all_data(digit_picker_keyboard(5, 2, 9, _))
    assert picker == [f"d:5:2:{d}" for d in range(10)] + ["b:5"]


def test_twelve_digits_wrap_into_rows() -> None:
    markup = reading_keyboard(1, [1] * 12, [None] * 12, _)
    assert [len(row) for row in markup.inline_keyboard] == [1, 6, 6]


@given(reading=st.integers(min_value=1, max_value=10**18 - 1), position=st.integers(0, 11),
       digit=st.integers(0, 9))
def test_callback_data_fits_the_bot_api_limit_and_round_trips(reading: int, position: int, digit: int) -> None:
    predicted = [digit] * (position + 1)
    labels: list[int | None] = [digit] * (position + 1)
    for markup in (reading_keyboard(reading, predicted, labels, _),
                   digit_picker_keyboard(reading, position, digit, _),
                   forget_keyboard(2**52, _)):
        for data in _all_data(markup):
            assert len(data.encode()) <= MAX_CALLBACK_BYTES
    assert parse_reading_action(f"d:{reading}:{position}:{digit}") == ReadingAction("digit", reading, position, digit)


@pytest.mark.parametrize("data", ["", "x", "d:1", "d:1:2", "c:1:2", "p:1", "d:1:2:10", "d:-1:0:1", "d:a:0:1",
                                  "c:1;DROP TABLE", "u:" + "9" * 40, "b:1:2:3", None])
def test_malformed_reading_callbacks_are_rejected(data: str | None) -> None:
    assert parse_reading_action(data) is None


def test_forget_and_language_callbacks() -> None:
    assert parse_forget_action("f:yes:42") == (True, 42)
    assert parse_forget_action("f:no:42") == (False, 42)
    assert parse_forget_action("f:yes") is None
    assert parse_forget_action("f:maybe:42") is None
    assert _all_data(forget_keyboard(42, _)) == ["f:yes:42", "f:no:42"]
    assert parse_language_action("l:zh_CN") == "zh_CN"
    assert parse_language_action("l:fr") is None
    markup = language_keyboard("zh_CN")
    assert _all_data(markup) == ["l:en", "l:zh_CN"]
    assert markup.inline_keyboard[0][1].text.startswith("✓")
