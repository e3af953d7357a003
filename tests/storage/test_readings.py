from __future__ import annotations

from datetime import UTC

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from storage import repository as repo
from storage.errors import InvalidLabel, NotYourSample, QuotaExceeded, UnknownSample
from storage.models import Prediction, Reading, Sample, User
from tests.storage.conftest import crop, digits

ALICE, BOB = 1001, 2002


def record(factory: sessionmaker[Session], answers: str = "4271", telegram_id: int = ALICE, **kw: object):
    with factory.begin() as s:
        return repo.record_reading(s, telegram_id=telegram_id, chat_id=telegram_id, file_id="F",
                                   file_unique_id="U", digits=digits(answers, **kw))  # type: ignore[arg-type]


def test_record_reading_stores_samples_and_predictions(factory: sessionmaker[Session]) -> None:
    rec = record(factory, "4271", base="4771")
    with factory() as s:
        view = repo.get_reading(s, telegram_id=ALICE, reading_id=rec.reading_id)
        assert view is not None
        assert view.text == "4271"
        assert [d.base_digit for d in view.digits] == [4, 7, 7, 1]
        assert [d.sample_id for d in view.digits] == rec.sample_ids
        assert all(d.label is None for d in view.digits)
        assert view.created_at.tzinfo is not None and view.created_at.utcoffset() == UTC.utcoffset(None)
        image = s.scalars(select(Sample.image).where(Sample.id == rec.sample_ids[2])).one()
        assert np.array_equal(np.frombuffer(image, np.uint8).reshape(28, 28), crop(2 * 31 + 7))


def test_reading_for_message_is_scoped_by_user_and_chat(factory: sessionmaker[Session]) -> None:
    rec = record(factory, "12")
    with factory.begin() as s:
        repo.attach_bot_message(s, reading_id=rec.reading_id, chat_id=ALICE, message_id=77)
    with factory() as s:
        found = repo.reading_for_message(s, telegram_id=ALICE, chat_id=ALICE, message_id=77)
        assert found is not None and found.reading_id == rec.reading_id and found.bot_message_id == 77
        assert repo.reading_for_message(s, telegram_id=BOB, chat_id=ALICE, message_id=77) is None
        assert repo.reading_for_message(s, telegram_id=ALICE, chat_id=ALICE, message_id=78) is None
        assert repo.get_reading(s, telegram_id=BOB, reading_id=rec.reading_id) is None
        assert repo.get_reading(s, telegram_id=ALICE, reading_id=rec.reading_id + 999) is None


def test_attach_bot_message_checks_the_chat(factory: sessionmaker[Session]) -> None:
    rec = record(factory, "1")
    with factory.begin() as s, pytest.raises(NotYourSample):
        repo.attach_bot_message(s, reading_id=rec.reading_id, chat_id=BOB, message_id=1)
    with factory.begin() as s, pytest.raises(UnknownSample):
        repo.attach_bot_message(s, reading_id=rec.reading_id + 5, chat_id=ALICE, message_id=1)


def test_true_text_kept_whole_without_labelling_any_digit(factory: sessionmaker[Session]) -> None:
    rec = record(factory, "4271")
    with factory.begin() as s:
        repo.label_sample(s, telegram_id=ALICE, reading_id=rec.reading_id, position=0, digit=4)
        repo.set_true_text(s, telegram_id=ALICE, reading_id=rec.reading_id, text="4271 1")
    with factory() as s:
        view = repo.get_reading(s, telegram_id=ALICE, reading_id=rec.reading_id)
        assert view is not None and view.true_text == "42711"
        assert [d.label for d in view.digits] == [4, None, None, None]  # the labels stay as they were
        assert repo.user_stats(s, telegram_id=ALICE).labelled == 1
    with factory.begin() as s:
        for wrong in ("42a7", "", "1" * 33):
            with pytest.raises(InvalidLabel):
                repo.set_true_text(s, telegram_id=ALICE, reading_id=rec.reading_id, text=wrong)
        with pytest.raises(NotYourSample):
            repo.set_true_text(s, telegram_id=BOB, reading_id=rec.reading_id, text="1")
        with pytest.raises(UnknownSample):
            repo.set_true_text(s, telegram_id=ALICE, reading_id=rec.reading_id + 9, text="1")
        repo.set_true_text(s, telegram_id=ALICE, reading_id=rec.reading_id, text="1" * 32)
    with factory.begin() as s:
        view = repo.get_reading(s, telegram_id=ALICE, reading_id=rec.reading_id)
        assert view is not None and view.true_text == "1" * 32
        repo.set_true_text(s, telegram_id=ALICE, reading_id=rec.reading_id, text=None)
    with factory() as s:
        view = repo.get_reading(s, telegram_id=ALICE, reading_id=rec.reading_id)
        assert view is not None and view.true_text is None


def _count(s: Session, model: type) -> int:
    return s.scalar(select(func.count()).select_from(model)) or 0


def test_failure_mid_way_leaves_nothing(factory: sessionmaker[Session]) -> None:
    # The predictions insert fails (no model version 999) after the reading and samples were written.
    with pytest.raises(IntegrityError), factory.begin() as s:
        repo.record_reading(s, telegram_id=ALICE, chat_id=1, file_id="F", file_unique_id="U",
                            digits=digits("123", source="personal", model_version_id=999))
    with factory() as s:
        assert [_count(s, m) for m in (User, Reading, Sample, Prediction)] == [0, 0, 0, 0]


def test_malformed_records_are_refused_before_writing(factory: sessionmaker[Session]) -> None:
    bad = digits("1")
    with factory.begin() as s:
        for wrong in (np.zeros((28, 27), np.uint8), np.zeros((28, 28), np.float32), b"\x00" * 10):
            with pytest.raises(ValueError):
                repo.record_reading(s, telegram_id=ALICE, chat_id=1, file_id="F", file_unique_id="U",
                                    digits=[type(bad[0])(**{**bad[0].__dict__, "image": wrong})])
        with pytest.raises(ValueError):
            repo.record_reading(s, telegram_id=ALICE, chat_id=1, file_id="F", file_unique_id="U",
                                digits=[type(bad[0])(**{**bad[0].__dict__, "source": "oracle"})])
        assert _count(s, Reading) == 0


def test_quota_exceeded(factory: sessionmaker[Session]) -> None:  # the fixture's limit is 100
    for _ in range(12):
        record(factory, "12345678")
    with pytest.raises(QuotaExceeded) as error, factory.begin() as s:
        repo.record_reading(s, telegram_id=ALICE, chat_id=1, file_id="F", file_unique_id="U",
                            digits=digits("12345"))
    assert (error.value.limit, error.value.stored) == (100, 96)
    record(factory, "1234")  # exactly up to the limit is fine
    record(factory, "1", telegram_id=BOB)  # the quota is per user


def test_update_ids_are_processed_once(factory: sessionmaker[Session]) -> None:
    with factory.begin() as s:
        assert repo.mark_update_processed(s, update_id=5) is True
        assert repo.mark_update_processed(s, update_id=5) is False
    with factory.begin() as s:
        assert repo.mark_update_processed(s, update_id=5) is False
        assert repo.mark_update_processed(s, update_id=6) is True


def test_get_or_create_user_and_language(factory: sessionmaker[Session]) -> None:
    with factory.begin() as s:
        user = repo.get_or_create_user(s, telegram_id=ALICE, language="zh-hans")
        again = repo.get_or_create_user(s, telegram_id=ALICE, language="en")
        assert again.id == user.id and again.language == "zh-hans"
        repo.set_user_language(s, telegram_id=ALICE, language="en")
    with factory() as s:
        found = repo.get_user(s, telegram_id=ALICE)
        assert found is not None and found.language == "en" and found.created_at.tzinfo is not None
        assert repo.get_user(s, telegram_id=BOB) is None


def test_prune_processed_updates(factory: sessionmaker[Session]) -> None:
    from datetime import timedelta

    from storage.models import utcnow

    with factory.begin() as s:
        repo.mark_update_processed(s, update_id=1)
    with factory.begin() as s:
        assert repo.prune_processed_updates(s, older_than=utcnow() - timedelta(days=1)) == 0
        assert repo.prune_processed_updates(s, older_than=utcnow() + timedelta(seconds=1)) == 1
        assert repo.mark_update_processed(s, update_id=1) is True
