"""Plain values the handlers see (built by bot.services) and the reply texts rendered from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from bot.i18n import Translator

# Below this confidence the reply says plainly that the bot is unsure ("4 or 9?").
LOW_CONFIDENCE = 0.6


@dataclass(frozen=True)
class DigitCard:
    digit: int  # the answer given
    confidence: float
    source: str  # "base" | "personal"
    label: int | None = None  # what the user said, if anything
    runner_up: int | None = None  # second choice; known right after recognition only


@dataclass(frozen=True)
class ReadingCard:
    """One photo's reading as the handlers show it."""

    reading_id: int
    owner_telegram_id: int
    chat_id: int
    bot_message_id: int | None
    digits: tuple[DigitCard, ...]
    personal_version: int | None = None  # the personal model version that answered, if any
    # The user's whole answer when it had a different number of digits than were read ("42711")
    true_text: str | None = None

    @property
    def predicted(self) -> list[int]:
        return [d.digit for d in self.digits]

    @property
    def labels(self) -> list[int | None]:
        return [d.label for d in self.digits]

    @property
    def text(self) -> str:
        return "".join(str(d.digit) for d in self.digits)

    @property
    def labelled(self) -> bool:
        return self.true_text is not None or any(d.label is not None for d in self.digits)


@dataclass(frozen=True)
class StatsCard:
    labelled: int
    samples: int
    accuracy: float | None
    base_accuracy: float | None
    last50_count: int
    last50_accuracy: float | None
    last50_base_accuracy: float | None
    per_digit: list[tuple[int, int, float | None]]  # (digit, labels, accuracy of the answers given)
    personal_version: int | None
    personal_since: datetime | None
    top_confusions: list[tuple[int, int, int]] = field(default_factory=list)  # (true, answered, count)
    personal_answers: int = 0  # labelled digits the personal model answered
    personal_accuracy: float | None = None
    personal_base_accuracy: float | None = None  # the base model on those same digits


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def reading_text(card: ReadingCard, _: Translator) -> str:
    """The reply to a photo: what was read, how sure, what was recorded, what to do next."""
    lines = _read_lines(card, _)
    if card.labelled:
        lines.append("")
        lines.append(_recorded_line(card, _))
        lines.append(_("Tap another button to change it, or ↩️ Undo."))
        return "\n".join(lines)
    unsure = [(i, d) for i, d in enumerate(card.digits)
              if d.confidence < LOW_CONFIDENCE and d.runner_up is not None]
    if len(card.digits) == 1 and unsure:
        digit = card.digits[0]
        lines.append(_("I'm not sure: {first} or {second}?", first=digit.digit, second=digit.runner_up))
    elif unsure:
        # (no _() nested in another _()'s arguments: Babel's extractor would miss the inner one)
        doubts = [_("#{position}: {first} or {second}?", position=i + 1, first=d.digit, second=d.runner_up)
                  for i, d in unsure]
        lines.append(_("I'm not sure about {digits}", digits="; ".join(doubts)))
    lines.append("")
    if len(card.digits) == 1:
        lines.append(_("Tap ✅ if I'm right, or the right digit."))
    else:
        lines.append(_("Tap ✅ if I'm right, or a position to fix it. "
                       "You can also reply to this message with the right digits, e.g. {example}.",
                       example=card.text))
    return "\n".join(lines)


def picker_text(card: ReadingCard, position: int, _: Translator) -> str:
    """The answer while the 0-9 picker is open for one position of a row: which digit is being fixed."""
    lines = _read_lines(card, _)
    if card.labelled:
        lines += ["", _recorded_line(card, _)]
    digit = card.digits[position]
    lines.append("")
    lines.append(_("✎ Fixing digit {position} of {count} (now {digit}): tap the right digit, or ⬅️ Back.",
                   position=position + 1, count=len(card.digits),
                   digit=digit.label if digit.label is not None else digit.digit))
    return "\n".join(lines)


def _read_lines(card: ReadingCard, _: Translator) -> list[str]:
    """What was read, with its confidence, and which model answered."""
    lines: list[str] = []
    if len(card.digits) == 1:
        digit = card.digits[0]
        lines.append(_("I read: {digit} ({confidence} sure)", digit=digit.digit,
                       confidence=_percent(digit.confidence)))
    else:
        lines.append(_("I read: {digits}", digits=card.text))
        lines.append("  ".join(
            _("#{position}: {digit} ({confidence})", position=i + 1, digit=d.digit,
              confidence=_percent(d.confidence))
            for i, d in enumerate(card.digits)
        ))
    if card.personal_version is not None:
        lines.append(_("Your personal model v{version} answered.", version=card.personal_version))
    return lines


def _recorded_line(card: ReadingCard, _: Translator) -> str:
    if card.true_text is not None:
        return _("✍️ Corrected: {digits}. I read a different number of digits, so I keep your whole answer. "
                 "Thanks!", digits=card.true_text)
    recorded = "".join(str(d.label if d.label is not None else d.digit) for d in card.digits)
    fixes = [
        _("#{position}: {said} → {label}", position=i + 1, said=d.digit, label=d.label)
        for i, d in enumerate(card.digits)
        if d.label is not None and d.label != d.digit
    ]
    if not fixes:
        return _("✅ Recorded: {digits}. Thanks!", digits=recorded)
    if len(card.digits) == 1:
        return _("✍️ Recorded: {digits} (I said {said}). Thanks, I'll learn from it.",
                 digits=recorded, said=card.digits[0].digit)
    return _("✍️ Recorded: {digits} (corrected {fixes}). Thanks, I'll learn from it.",
             digits=recorded, fixes=", ".join(fixes))


def stats_text(stats: StatsCard, _: Translator) -> str:
    if stats.labelled == 0:
        return _("No labelled digits yet. Send me a photo of digits and tap ✅ or the right digit — "
                 "then /stats shows how often I'm right for you.")
    lines = [
        _("📊 Your statistics"),
        _("Labelled digits: {labelled} (photos' digits stored: {samples})",
          labelled=stats.labelled, samples=stats.samples),
        _("Right overall: {accuracy} (base model alone: {base})",
          accuracy=_percent(stats.accuracy), base=_percent(stats.base_accuracy)),
        _("Right in your last {count}: {accuracy} (base model alone: {base})", count=stats.last50_count,
          accuracy=_percent(stats.last50_accuracy), base=_percent(stats.last50_base_accuracy)),
    ]
    if stats.personal_version is not None and stats.personal_since is not None:
        lines.append(_("Personal model: v{version}, live since {since}", version=stats.personal_version,
                       since=stats.personal_since.strftime("%Y-%m-%d %H:%M UTC")))
    else:
        lines.append(_("Personal model: none yet (the base model answers)."))
    if stats.personal_answers:
        lines.append(_("When your personal model answered ({count} digits): right {accuracy}; the base model "
                       "alone would have been right {base}.", count=stats.personal_answers,
                       accuracy=_percent(stats.personal_accuracy), base=_percent(stats.personal_base_accuracy)))
    per_digit = [
        _("{digit}: {accuracy} of {count}", digit=digit, accuracy=_percent(accuracy), count=count)
        for digit, count, accuracy in stats.per_digit
        if count
    ]
    if per_digit:
        lines.append(_("Per digit (right / labels):"))
        lines.extend("  " + "   ".join(per_digit[i : i + 4]) for i in range(0, len(per_digit), 4))
    if stats.top_confusions:
        pairs = [_("{true} read as {answered} ×{count}", true=t, answered=a, count=n)
                 for t, a, n in stats.top_confusions[:3]]
        lines.append(_("Most frequent mix-ups: {pairs}", pairs=", ".join(pairs)))
    return "\n".join(lines)
