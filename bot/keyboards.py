"""Inline keyboards and their callback_data (each ≤ 64 bytes, the Bot API limit).

callback_data formats (reading ids are storage's integer ids, positions start at 0):
  ``c:<reading>``                   confirm every digit as read
  ``d:<reading>:<pos>:<digit>``     the digit at <pos> is <digit>
  ``p:<reading>:<pos>``             show the 0-9 picker for one position of a row of digits
  ``b:<reading>``                   back from the picker to the overview
  ``u:<reading>``                   undo: forget the labels given for this reading
  ``f:yes:<user>`` / ``f:no:<user>``  /forget confirmation (only <user>, who asked, may answer)
  ``l:<language>``                  /lang choice (sets the language of whoever taps it)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from bot.i18n import LANGUAGE_NAMES, Translator

MAX_CALLBACK_BYTES = 64
_POSITIONS_PER_ROW = 6

READING_PATTERN = r"^[cdpbu]:"
FORGET_PATTERN = r"^f:"
LANGUAGE_PATTERN = r"^l:"

_READING_ACTION = re.compile(r"^(?P<kind>[cdpbu]):(?P<reading>\d{1,18})(?::(?P<pos>\d{1,2}))?(?::(?P<digit>\d))?$")


@dataclass(frozen=True)
class ReadingAction:
    kind: str  # "confirm" | "digit" | "pick" | "back" | "undo"
    reading_id: int
    position: int | None = None
    digit: int | None = None


_KINDS = {"c": "confirm", "d": "digit", "p": "pick", "b": "back", "u": "undo"}
_ARITY = {"c": (False, False), "d": (True, True), "p": (True, False), "b": (False, False), "u": (False, False)}


def parse_reading_action(data: str | None) -> ReadingAction | None:
    """The action a reading button asks for, or None for malformed (e.g. forged) callback_data."""
    match = _READING_ACTION.match(data or "")
    if match is None:
        return None
    kind = match["kind"]
    wants_pos, wants_digit = _ARITY[kind]
    if (match["pos"] is not None) != wants_pos or (match["digit"] is not None) != wants_digit:
        return None
    return ReadingAction(
        kind=_KINDS[kind],
        reading_id=int(match["reading"]),
        position=int(match["pos"]) if match["pos"] is not None else None,
        digit=int(match["digit"]) if match["digit"] is not None else None,
    )


def _button(text: str, data: str) -> InlineKeyboardButton:
    if len(data.encode()) > MAX_CALLBACK_BYTES:  # cannot happen with integer ids; guards future edits
        raise ValueError(f"callback_data over {MAX_CALLBACK_BYTES} bytes: {data!r}")
    return InlineKeyboardButton(text, callback_data=data)


def _digit_rows(reading_id: int, position: int, marked: int | None) -> list[list[InlineKeyboardButton]]:
    buttons = [
        _button(f"• {digit} •" if digit == marked else str(digit), f"d:{reading_id}:{position}:{digit}")
        for digit in range(10)
    ]
    return [buttons[:5], buttons[5:]]


def reading_keyboard(
    reading_id: int,
    predicted: Sequence[int],
    labels: Sequence[int | None],
    _: Translator,
    *,
    true_text: str | None = None,
) -> InlineKeyboardMarkup:
    """Overview keyboard: ✅ confirm, then 0-9 (one digit) or one button per position (a row);
    ↩️ Undo once something is recorded (labels, or the whole answer kept as ``true_text``)."""
    labelled = true_text is not None or any(label is not None for label in labels)
    rows: list[list[InlineKeyboardButton]] = []
    # ✅ confirms the digits as they stand: the answer, with any corrections already made
    shown = "".join(str(d if label is None else label) for d, label in zip(predicted, labels, strict=True))
    rows.append([_button(_("✅ {digits} is right", digits=shown), f"c:{reading_id}")])
    if len(predicted) == 1:
        rows.extend(_digit_rows(reading_id, 0, labels[0] if labels else None))
    else:
        positions = [
            _button(
                _("#{position}: {digit}", position=pos + 1, digit=label if label is not None else digit)
                + (" ✎" if label is not None and label != digit else ""),
                f"p:{reading_id}:{pos}",
            )
            for pos, (digit, label) in enumerate(zip(predicted, labels, strict=True))
        ]
        rows.extend(positions[i : i + _POSITIONS_PER_ROW] for i in range(0, len(positions), _POSITIONS_PER_ROW))
    if labelled:
        rows.append([_button(_("↩️ Undo"), f"u:{reading_id}")])
    return InlineKeyboardMarkup(rows)


def digit_picker_keyboard(
    reading_id: int, position: int, current: int | None, _: Translator
) -> InlineKeyboardMarkup:
    """0-9 for one position of a row of digits, plus a way back to the overview."""
    rows = _digit_rows(reading_id, position, current)
    rows.append([_button(_("⬅️ Back"), f"b:{reading_id}")])
    return InlineKeyboardMarkup(rows)


_FORGET_ACTION = re.compile(r"^f:(?P<answer>yes|no):(?P<user>\d{1,20})$")


def forget_keyboard(telegram_id: int, _: Translator) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        [[_button(_("🗑 Yes, delete everything"), f"f:yes:{telegram_id}"),
          _button(_("Cancel"), f"f:no:{telegram_id}")]]
    )


def parse_forget_action(data: str | None) -> tuple[bool, int] | None:
    """(confirmed, telegram id of the user who asked) or None for malformed callback_data."""
    match = _FORGET_ACTION.match(data or "")
    return None if match is None else (match["answer"] == "yes", int(match["user"]))


def parse_language_action(data: str | None) -> str | None:
    code = (data or "")[2:] if (data or "").startswith("l:") else None
    return code if code in LANGUAGE_NAMES else None


def language_keyboard(current: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        [
            [
                _button(("✓ " if code == current else "") + name, f"l:{code}")
                for code, name in LANGUAGE_NAMES.items()
            ]
        ]
    )
