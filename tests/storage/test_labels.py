from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from storage import repository as repo
from storage.errors import InvalidLabel, NotYourSample, UnknownSample
from storage.models import Label, utcnow
from tests.storage.conftest import crop, digits

ALICE, BOB = 1001, 2002


def record(factory: sessionmaker[Session], answers: str, telegram_id: int = ALICE) -> int:
    with factory.begin() as s:
        return repo.record_reading(s, telegram_id=telegram_id, chat_id=telegram_id, file_id="F",
                                   file_unique_id="U", digits=digits(answers)).reading_id


def test_confirm_and_correct(factory: sessionmaker[Session]) -> None:
    reading = record(factory, "42")
    with factory.begin() as s:
        confirmed = repo.label_sample(s, telegram_id=ALICE, reading_id=reading, position=0, digit=4)
        corrected = repo.label_sample(s, telegram_id=ALICE, reading_id=reading, position=1, digit="7")
    assert (confirmed.kind, confirmed.digit, confirmed.predicted) == ("confirmed", 4, 4)
    assert (corrected.kind, corrected.digit, corrected.predicted) == ("corrected", 7, 2)
    with factory() as s:
        view = repo.get_reading(s, telegram_id=ALICE, reading_id=reading)
        assert view is not None
        assert [(d.label, d.label_kind) for d in view.digits] == [(4, "confirmed"), (7, "corrected")]
        assert view.labelled_text == "47"


def test_later_label_supersedes_and_undo_restores(factory: sessionmaker[Session]) -> None:
    reading = record(factory, "3")
    with factory.begin() as s:
        first = repo.label_sample(s, telegram_id=ALICE, reading_id=reading, position=0, digit=8)
        second = repo.label_sample(s, telegram_id=ALICE, reading_id=reading, position=0, digit=3)
        same = repo.label_sample(s, telegram_id=ALICE, reading_id=reading, position=0, digit=3)
    assert same.label_id == second.label_id  # the same answer again changes nothing
    with factory() as s:
        history = s.execute(select(Label.digit, Label.superseded_at).order_by(Label.id)).all()
        assert [(d, at is None) for d, at in history] == [(8, False), (3, True)]
        assert repo.training_set(s, user_id=repo.get_user(s, telegram_id=ALICE).id).labels.tolist() == [3]  # type: ignore[union-attr]
    with factory.begin() as s:
        restored = repo.undo_label(s, telegram_id=ALICE, reading_id=reading, position=0)
    assert restored is not None and restored.label_id == first.label_id and restored.digit == 8
    with factory.begin() as s:
        assert repo.undo_label(s, telegram_id=ALICE, reading_id=reading, position=0) is None
        assert repo.undo_label(s, telegram_id=ALICE, reading_id=reading, position=0) is None
        view = repo.get_reading(s, telegram_id=ALICE, reading_id=reading)
        assert view is not None and view.digits[0].label is None
        assert len(s.scalars(select(Label.id)).all()) == 2  # history kept


def test_one_current_label_per_sample_is_enforced_by_the_database(factory: sessionmaker[Session]) -> None:
    reading = record(factory, "5")
    with factory.begin() as s:
        label = repo.label_sample(s, telegram_id=ALICE, reading_id=reading, position=0, digit=5)
    with pytest.raises(IntegrityError), factory.begin() as s:
        s.add(Label(sample_id=label.sample_id, user_id=s.scalar(select(Label.user_id)), digit=1,
                    kind="corrected", created_at=utcnow(), answer=5, base_answer=5, personal=False,
                    recorded_at=utcnow()))


def test_nobody_labels_another_users_sample(factory: sessionmaker[Session]) -> None:
    reading = record(factory, "12")
    record(factory, "9", telegram_id=BOB)
    for call in (
        lambda s: repo.label_sample(s, telegram_id=BOB, reading_id=reading, position=0, digit=1),
        lambda s: repo.label_reading(s, telegram_id=BOB, reading_id=reading, digits="12"),
        lambda s: repo.undo_label(s, telegram_id=BOB, reading_id=reading, position=0),
        lambda s: repo.label_sample(s, telegram_id=777, reading_id=reading, position=0, digit=1),
    ):
        with pytest.raises(NotYourSample), factory.begin() as s:
            call(s)
    with factory() as s:
        assert s.scalars(select(Label.id)).all() == []


def test_unknown_samples_and_bad_digits(factory: sessionmaker[Session]) -> None:
    reading = record(factory, "12")
    with factory.begin() as s:
        with pytest.raises(UnknownSample):
            repo.label_sample(s, telegram_id=ALICE, reading_id=reading, position=2, digit=1)
        with pytest.raises(UnknownSample):
            repo.label_sample(s, telegram_id=ALICE, reading_id=reading + 10, position=0, digit=1)
        for bad in (10, -1, "x", "12", ""):
            with pytest.raises(InvalidLabel):
                repo.label_sample(s, telegram_id=ALICE, reading_id=reading, position=0, digit=bad)


def test_label_reading_from_a_text_reply(factory: sessionmaker[Session]) -> None:
    reading = record(factory, "4271")
    with factory.begin() as s:
        for bad in ("427", "42711", "42a1", "４２７１"):
            with pytest.raises(InvalidLabel):
                repo.label_reading(s, telegram_id=ALICE, reading_id=reading, digits=bad)
        labels = repo.label_reading(s, telegram_id=ALICE, reading_id=reading, digits="4 2 9 1")
    assert [(x.digit, x.kind) for x in labels] == [(4, "confirmed"), (2, "confirmed"), (9, "corrected"),
                                                   (1, "confirmed")]


def test_training_set_has_current_labels_only_in_order(factory: sessionmaker[Session]) -> None:
    first, second = record(factory, "12"), record(factory, "34")
    record(factory, "5", telegram_id=BOB)
    with factory.begin() as s:
        repo.label_reading(s, telegram_id=ALICE, reading_id=second, digits="39")
        repo.label_sample(s, telegram_id=ALICE, reading_id=first, position=1, digit=7)
        repo.label_sample(s, telegram_id=ALICE, reading_id=first, position=1, digit=2)
        repo.label_reading(s, telegram_id=BOB, reading_id=first + 2, digits="5")
    with factory() as s:
        alice = repo.get_user(s, telegram_id=ALICE)
        assert alice is not None
        data = repo.training_set(s, user_id=alice.id)
    assert data.images.shape == (3, 28, 28) and data.images.dtype == np.uint8
    assert data.labels.tolist() == [2, 3, 9]
    assert np.array_equal(data.images[0], crop(1 * 31 + 2))
    assert list(data.sample_ids) == sorted(data.sample_ids)
