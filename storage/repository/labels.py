"""Labels (confirmations and corrections) with history, undo, and the training data they make.

Each label change keeps ``users.labels_since_finetune`` equal to the number of the user's current
labels created at or after ``users.finetune_started_at``, so the users-due query stays cheap.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.sources import PERSONAL
from storage.errors import InvalidLabel, UnknownSample
from storage.models import CONFIRMED, CORRECTED, Label, Prediction, Sample, User, utcnow
from storage.records import LabelRecord, TrainingSet
from storage.repository._common import lock_user
from storage.repository.readings import owned_reading, parse_digit


def _counts(user: User, label: Label) -> bool:
    started = user.finetune_started_at
    return started is None or label.created_at >= started


def _bump(session: Session, user: User, delta: int) -> None:
    if delta:
        session.execute(
            update(User)
            .where(User.id == user.id)
            .values(labels_since_finetune=User.labels_since_finetune + delta)
            .execution_options(synchronize_session=False)
        )
        session.expire(user, ["labels_since_finetune"])


def _sample_at(session: Session, *, telegram_id: int, reading_id: int, position: int) -> tuple[Sample, User]:
    reading = owned_reading(session, telegram_id=telegram_id, reading_id=reading_id)
    sample = session.scalars(
        select(Sample).where(Sample.reading_id == reading.id, Sample.position == position)
    ).one_or_none()
    if sample is None:
        raise UnknownSample(f"reading {reading_id} has no digit at position {position}")
    user = lock_user(session, reading.user_id)
    assert user is not None
    return sample, user


def _current(session: Session, sample_id: int) -> Label | None:
    return session.scalars(
        select(Label).where(Label.sample_id == sample_id, Label.superseded_at.is_(None))
    ).one_or_none()


def _record(session: Session, sample: Sample, label: Label, predicted: int) -> LabelRecord:
    return LabelRecord(
        label_id=label.id, sample_id=sample.id, reading_id=sample.reading_id, position=sample.position,
        digit=label.digit, kind=label.kind, predicted=predicted, created_at=label.created_at,
    )


def label_sample(
    session: Session, *, telegram_id: int, reading_id: int, position: int, digit: int | str
) -> LabelRecord:
    """Label the digit at ``position`` of a reading: "confirmed" if it equals the answer given,
    "corrected" otherwise. A later label supersedes the current one (history is kept); labelling
    with the same digit again changes nothing. Raises UnknownSample, NotYourSample, InvalidLabel."""
    value = parse_digit(digit)
    sample, user = _sample_at(session, telegram_id=telegram_id, reading_id=reading_id, position=position)
    prediction = session.execute(
        select(Prediction.digit, Prediction.base_digit, Prediction.source, Prediction.created_at)
        .where(Prediction.sample_id == sample.id)
    ).one()
    predicted = prediction.digit
    current = _current(session, sample.id)
    if current is not None and current.digit == value:
        return _record(session, sample, current, predicted)
    now = utcnow()
    delta = 0
    if current is not None:
        current.superseded_at = now
        delta -= _counts(user, current)
        session.flush()  # the old label stops being current before the new one is inserted
    label = Label(
        sample_id=sample.id, user_id=user.id, digit=value,
        kind=CONFIRMED if value == predicted else CORRECTED, created_at=now,
        answer=predicted, base_answer=prediction.base_digit, personal=prediction.source == PERSONAL,
        recorded_at=prediction.created_at,
    )
    session.add(label)
    session.flush()
    _bump(session, user, delta + _counts(user, label))
    return _record(session, sample, label, predicted)


def label_reading(session: Session, *, telegram_id: int, reading_id: int, digits: str) -> list[LabelRecord]:
    """Label every digit of a reading from a text reply such as "4271" (spaces ignored).
    Raises InvalidLabel when it is not all digits or its length differs from the reading's."""
    text = "".join(digits.split())
    owned_reading(session, telegram_id=telegram_id, reading_id=reading_id)
    count = len(list(session.scalars(select(Sample.id).where(Sample.reading_id == reading_id))))
    if not text.isascii() or not text.isdigit():
        raise InvalidLabel(f"not digits: {digits!r}")
    if len(text) != count:
        raise InvalidLabel(f"the photo has {count} digits, the reply has {len(text)}")
    return [
        label_sample(session, telegram_id=telegram_id, reading_id=reading_id, position=i, digit=ch)
        for i, ch in enumerate(text)
    ]


def undo_label(session: Session, *, telegram_id: int, reading_id: int, position: int) -> LabelRecord | None:
    """Take back the current label of a digit: the label before it becomes current again (or the
    digit is unlabelled; then None is returned). Raises UnknownSample, NotYourSample."""
    sample, user = _sample_at(session, telegram_id=telegram_id, reading_id=reading_id, position=position)
    current = _current(session, sample.id)
    if current is None:
        return None
    predicted = session.scalars(select(Prediction.digit).where(Prediction.sample_id == sample.id)).one()
    previous = session.scalars(
        select(Label)
        .where(Label.sample_id == sample.id, Label.id < current.id)
        .order_by(Label.id.desc())
        .limit(1)
    ).one_or_none()
    current.superseded_at = utcnow()
    delta = -_counts(user, current)
    session.flush()
    if previous is not None:
        previous.superseded_at = None
        delta += _counts(user, previous)
        session.flush()
    _bump(session, user, delta)
    return None if previous is None else _record(session, sample, previous, predicted)


def current_label_count(session: Session, *, user_id: int, since: datetime | None = None) -> int:
    """Current labels of a user (created at or after ``since`` when given)."""
    query = select(Label.id).where(Label.user_id == user_id, Label.superseded_at.is_(None))
    if since is not None:
        query = query.where(Label.created_at >= since)
    return len(list(session.scalars(query)))


def label_revision(session: Session, *, user_id: int) -> tuple[int, int]:
    """A cheap fingerprint of the user's current labels, (count, sum of label ids): any new label,
    correction (a new row supersedes one) or undo (a row goes, an old one comes back) changes it, so
    whatever was built from ``training_set`` is rebuilt exactly when it would differ."""
    count, total = session.execute(
        select(func.count(Label.id), func.coalesce(func.sum(Label.id), 0))
        .where(Label.user_id == user_id, Label.superseded_at.is_(None))
    ).one()
    return int(count), int(total)


def training_set(session: Session, *, user_id: int) -> TrainingSet:
    """The user's labelled samples (current labels only) in recording order, ready for training."""
    rows = session.execute(
        select(Sample.id, Sample.image, Label.digit, Label.created_at)
        .join(Label, (Label.sample_id == Sample.id) & Label.superseded_at.is_(None))
        .where(Label.user_id == user_id, Sample.user_id == user_id)
        .order_by(Sample.id)
    ).all()
    if not rows:
        raise_empty = np.zeros((0, 28, 28), dtype=np.uint8)
        return TrainingSet(raise_empty, np.zeros(0, np.int64), np.zeros(0, np.int64), [])
    images = np.frombuffer(b"".join(r.image for r in rows), dtype=np.uint8).reshape(len(rows), 28, 28)
    return TrainingSet(
        images=images.copy(),
        labels=np.fromiter((r.digit for r in rows), dtype=np.int64, count=len(rows)),
        sample_ids=np.fromiter((r.id for r in rows), dtype=np.int64, count=len(rows)),
        labelled_at=[r.created_at for r in rows],
    )
