from __future__ import annotations

from datetime import UTC, datetime

from bot.i18n import translator
from bot.views import DigitCard, ReadingCard, StatsCard, picker_text, reading_text, stats_text

en, zh = translator("en"), translator("zh_CN")


def _card(*digits: DigitCard, version: int | None = None) -> ReadingCard:
    return ReadingCard(reading_id=1, owner_telegram_id=42, chat_id=42, bot_message_id=None, digits=digits,
                       personal_version=version)


def test_a_sure_digit() -> None:
    text = reading_text(_card(DigitCard(4, 0.97, "base", runner_up=9)), en)
    assert text.startswith("I read: 4 (97% sure)")
    assert "not sure" not in text and "Tap ✅" in text


def test_low_confidence_is_said_plainly() -> None:
    assert "I'm not sure: 4 or 9?" in reading_text(_card(DigitCard(4, 0.52, "base", runner_up=9)), en)
    assert "我不太确定：是 4 还是 9？" in reading_text(_card(DigitCard(4, 0.52, "base", runner_up=9)), zh)
    two = _card(DigitCard(4, 0.5, "base", runner_up=9), DigitCard(7, 0.4, "base", runner_up=1))
    assert "第2位是 7 还是 1？" in reading_text(two, zh)
    row = _card(DigitCard(4, 0.99, "base", runner_up=9), DigitCard(7, 0.4, "personal", runner_up=1), version=3)
    text = reading_text(row, en)
    assert "I read: 4 7" not in text and "I read: 47" in text
    assert "I'm not sure about #2: 7 or 1?" in text and "#1:" not in text.split("not sure")[1]
    assert "Your personal model v3 answered." in text
    assert "e.g. 47" in text


def test_recorded_labels_are_shown() -> None:
    confirmed = reading_text(_card(DigitCard(4, 0.9, "base", label=4)), en)
    assert "✅ Recorded: 4. Thanks!" in confirmed
    corrected = reading_text(_card(DigitCard(4, 0.9, "base", label=9)), en)
    assert "Recorded: 9 (I said 4)" in corrected
    row = reading_text(_card(DigitCard(4, 0.9, "base", label=4), DigitCard(7, 0.9, "base", label=1)), en)
    assert "Recorded: 41 (corrected #2: 7 → 1)" in row
    assert "not sure" not in reading_text(_card(DigitCard(4, 0.2, "base", runner_up=9, label=4)), en)


def test_stats_text() -> None:
    assert "No labelled digits yet" in stats_text(StatsCard(0, 0, None, None, 0, None, None, [], None, None), en)
    stats = StatsCard(
        labelled=60, samples=64, accuracy=0.9, base_accuracy=0.8, last50_count=50, last50_accuracy=0.94,
        last50_base_accuracy=0.8, per_digit=[(d, 6, 0.5 if d == 4 else 1.0) for d in range(10)],
        personal_version=2, personal_since=datetime(2026, 11, 20, 8, 30, tzinfo=UTC),
        top_confusions=[(4, 9, 3)], personal_answers=20, personal_accuracy=0.95, personal_base_accuracy=0.7,
    )
    text = stats_text(stats, en)
    for expected in ("Labelled digits: 60", "Right overall: 90% (base model alone: 80%)",
                     "Right in your last 50: 94%", "Personal model: v2, live since 2026-11-20 08:30 UTC",
                     "4: 50% of 6", "4 read as 9 ×3", "right 95%; the base model alone would have been right 70%"):
        assert expected in text
    assert "个人模型：v2" in stats_text(stats, zh) and "4 被认成 9 ×3" in stats_text(stats, zh)


def test_the_picker_says_which_position_it_fixes() -> None:
    row = _card(DigitCard(4, 0.9, "base"), DigitCard(7, 0.5, "base", runner_up=1), DigitCard(2, 0.9, "base"))
    text = picker_text(row, 1, en)
    assert text.startswith("I read: 472")
    assert text.endswith("✎ Fixing digit 2 of 3 (now 7): tap the right digit, or ⬅️ Back.")
    assert "Tap ✅" not in text and "not sure" not in text  # the overview's instructions are for the overview
    corrected = _card(DigitCard(4, 0.9, "base"), DigitCard(7, 0.9, "base", label=1))
    text = picker_text(corrected, 1, en)
    assert "Recorded: 41" in text and "Fixing digit 2 of 2 (now 1)" in text  # the label, not the reading
    assert "正在改第2位（共2位，现在是 1）" in picker_text(corrected, 1, zh)
