from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from storage import repository as repo
from tests.storage.conftest import digits

ALICE = 1001


def test_stats_of_an_unknown_user_are_zero(factory: sessionmaker[Session]) -> None:
    with factory() as s:
        stats = repo.user_stats(s, telegram_id=ALICE)
    assert (stats.labelled, stats.accuracy, stats.last50_accuracy, stats.buckets) == (0, None, None, [])
    assert [d.count for d in stats.per_digit] == [0] * 10


def test_stats_count_answers_against_current_labels(factory: sessionmaker[Session]) -> None:
    with factory.begin() as s:
        # 60 base answers: "1" read as 7 by both models 20 times, then 40 right answers.
        for i in range(30):
            rec = repo.record_reading(s, telegram_id=ALICE, chat_id=1, file_id="F", file_unique_id="U",
                                      digits=digits("73" if i < 10 else "13", base="73" if i < 10 else "13"))
            repo.label_reading(s, telegram_id=ALICE, reading_id=rec.reading_id, digits="13")
        user_id = rec.user_id
        version = repo.add_model_version(s, user_id=user_id, parent_id=None, weights=b"w", metrics={"acc": 1})
        repo.promote_model_version(s, user_id=user_id, version_id=version.id)
        # 10 personal answers: right where the base model was wrong on 4 of them.
        for i in range(5):
            rec = repo.record_reading(s, telegram_id=ALICE, chat_id=1, file_id="F", file_unique_id="U",
                                      digits=digits("12", base="72" if i < 4 else "12", source="personal",
                                                    model_version_id=version.id))
            repo.label_reading(s, telegram_id=ALICE, reading_id=rec.reading_id, digits="12")
        unlabelled = repo.record_reading(s, telegram_id=ALICE, chat_id=1, file_id="F", file_unique_id="U",
                                         digits=digits("5"))
        # A label that was later undone does not count.
        repo.label_sample(s, telegram_id=ALICE, reading_id=unlabelled.reading_id, position=0, digit=6)
        repo.undo_label(s, telegram_id=ALICE, reading_id=unlabelled.reading_id, position=0)
    with factory() as s:
        stats = repo.user_stats(s, telegram_id=ALICE, bucket_size=20)
    assert (stats.labelled, stats.correct, stats.base_correct, stats.samples) == (70, 60, 56, 71)
    assert (stats.last50_count, stats.last50_correct, stats.last50_base_correct) == (50, 50, 46)
    assert (stats.personal_answers, stats.personal_correct, stats.personal_base_correct) == (10, 10, 6)
    one = stats.per_digit[1]
    assert (one.count, one.correct, one.base_correct) == (35, 25, 21)
    assert stats.per_digit[3].accuracy == 1.0 and stats.per_digit[5].count == 0
    assert stats.confusions == [(1, 7, 10)]
    assert [(b.count, b.correct) for b in stats.buckets] == [(20, 10), (20, 20), (20, 20), (10, 10)]
    assert sum(b.count for b in stats.daily) == 70
    assert all(b.start.tzinfo is not None for b in stats.buckets)
    assert [(m.version, m.status, m.metrics) for m in stats.models] == [(1, "active", {"acc": 1})]
    assert stats.models[0].promoted_at is not None
