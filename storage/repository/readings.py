"""Recognised photos ("readings"): their samples and predictions, and the bot's reply."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from core.sources import BASE, PERSONAL
from storage.errors import InvalidLabel, NotYourSample, QuotaExceeded, UnknownSample
from storage.models import Base, Label, Prediction, Reading, Sample, utcnow
from storage.records import (
    IMAGE_BYTES,
    IMAGE_SHAPE,
    TRUE_TEXT_MAX,
    DigitRecord,
    DigitView,
    ReadingRecord,
    ReadingView,
)
from storage.repository._common import user_id_for
from storage.repository.users import get_or_create_user


def image_bytes(image: np.ndarray | bytes) -> bytes:
    """The 784 row-major bytes of a 28x28 uint8 crop (raises InvalidLabel-free ValueError if not)."""
    if isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
    else:
        array = np.asarray(image)
        if array.shape != IMAGE_SHAPE or array.dtype != np.uint8:
            raise ValueError(f"expected a (28, 28) uint8 image, got {array.shape} {array.dtype}")
        data = np.ascontiguousarray(array).tobytes()
    if len(data) != IMAGE_BYTES:
        raise ValueError(f"expected {IMAGE_BYTES} image bytes, got {len(data)}")
    return data


def _validate(digit: DigitRecord) -> None:
    for name in ("digit", "base_digit"):
        if not 0 <= int(getattr(digit, name)) <= 9:
            raise ValueError(f"{name} must be 0-9, got {getattr(digit, name)}")
    if digit.source not in (BASE, PERSONAL):
        raise ValueError(f"source must be 'base' or 'personal', got {digit.source!r}")


def count_samples(session: Session, *, user_id: int) -> int:
    """How many samples the user has stored."""
    return session.scalar(select(func.count()).select_from(Sample).where(Sample.user_id == user_id)) or 0


def record_reading(
    session: Session,
    *,
    telegram_id: int,
    chat_id: int,
    file_id: str,
    file_unique_id: str,
    digits: Sequence[DigitRecord],
    status: str = "ok",
    language: str | None = None,
) -> ReadingRecord:
    """Store one recognised photo: the reading, one sample + prediction per digit (left to right).

    All rows go in the caller's transaction: an error part-way leaves nothing once it rolls back.
    Raises :class:`QuotaExceeded` past ``max_samples_per_user`` (from the session factory's info),
    ValueError for a malformed DigitRecord.
    """
    images = [image_bytes(d.image) for d in digits]
    for digit in digits:
        _validate(digit)
    user_id = user_id_for(session, telegram_id)
    if user_id is None:
        user_id = get_or_create_user(session, telegram_id=telegram_id, language=language).id
    limit = session.info.get("max_samples_per_user")
    if limit is not None and digits:
        stored = count_samples(session, user_id=user_id)
        if stored + len(digits) > limit:
            raise QuotaExceeded(limit=int(limit), stored=stored)
    now = utcnow()
    # Core statements on the tables (not the ORM unit of work or bulk path): the bot's hot path.
    connection = session.connection()
    readings, samples, predictions = (Base.metadata.tables[t] for t in ("readings", "samples", "predictions"))
    reading_id: int = connection.execute(
        insert(readings).values(user_id=user_id, chat_id=chat_id, file_id=file_id,
                                file_unique_id=file_unique_id, status=status, created_at=now)
        .returning(readings.c.id)
    ).scalar_one()
    sample_ids: list[int] = []
    if digits:
        sample_ids = list(connection.execute(
            insert(samples).returning(samples.c.id, sort_by_parameter_order=True),
            [{"user_id": user_id, "reading_id": reading_id, "position": position, "image": data,
              "created_at": now} for position, data in enumerate(images)],
        ).scalars())
        connection.execute(insert(predictions), [
            {"sample_id": sample_id, "user_id": user_id, "digit": int(d.digit),
             "confidence": float(d.confidence), "source": d.source, "model_version_id": d.model_version_id,
             "base_digit": int(d.base_digit), "base_confidence": float(d.base_confidence), "created_at": now}
            for sample_id, d in zip(sample_ids, digits, strict=True)
        ])
    return ReadingRecord(reading_id=reading_id, user_id=user_id, sample_ids=sample_ids)


def attach_bot_message(session: Session, *, reading_id: int, chat_id: int, message_id: int) -> None:
    """Remember the bot's reply message for a reading (so a reply to it can be matched later)."""
    reading = session.get(Reading, reading_id)
    if reading is None:
        raise UnknownSample(f"no reading {reading_id}")
    if reading.chat_id != chat_id:
        raise NotYourSample(f"reading {reading_id} was not sent in chat {chat_id}")
    reading.bot_message_id = message_id
    session.flush()


def _view(session: Session, reading: Reading) -> ReadingView:
    rows = session.execute(
        select(Sample.id, Sample.position, Prediction, Label.digit, Label.kind)
        .join(Prediction, Prediction.sample_id == Sample.id)
        .outerjoin(Label, (Label.sample_id == Sample.id) & Label.superseded_at.is_(None))
        .where(Sample.reading_id == reading.id)
        .order_by(Sample.position)
    ).all()
    digits = [
        DigitView(
            sample_id=sample_id, position=position, digit=p.digit, confidence=p.confidence,
            source=p.source, base_digit=p.base_digit, base_confidence=p.base_confidence,
            model_version_id=p.model_version_id, label=label, label_kind=kind,
        )
        for sample_id, position, p, label, kind in rows
    ]
    return ReadingView(
        reading_id=reading.id, user_id=reading.user_id, chat_id=reading.chat_id,
        file_id=reading.file_id, file_unique_id=reading.file_unique_id,
        bot_message_id=reading.bot_message_id, status=reading.status, created_at=reading.created_at,
        digits=digits, true_text=reading.true_text,
    )


def owned_reading(session: Session, *, telegram_id: int, reading_id: int) -> Reading:
    """The reading if it belongs to this user; UnknownSample / NotYourSample otherwise."""
    reading = session.get(Reading, reading_id)
    if reading is None:
        raise UnknownSample(f"no reading {reading_id}")
    if reading.user_id != user_id_for(session, telegram_id):
        raise NotYourSample(f"reading {reading_id} belongs to another user")
    return reading


def get_reading(session: Session, *, telegram_id: int, reading_id: int) -> ReadingView | None:
    """The reading with its digits and current labels; None if absent or not this user's."""
    try:
        reading = owned_reading(session, telegram_id=telegram_id, reading_id=reading_id)
    except (UnknownSample, NotYourSample):
        return None
    return _view(session, reading)


def reading_for_message(
    session: Session, *, telegram_id: int, chat_id: int, message_id: int
) -> ReadingView | None:
    """The reading the bot answered with ``message_id`` in ``chat_id``, if it is this user's."""
    user_id = user_id_for(session, telegram_id)
    if user_id is None:
        return None
    reading = session.scalars(
        select(Reading)
        .where(Reading.user_id == user_id, Reading.chat_id == chat_id, Reading.bot_message_id == message_id)
        .order_by(Reading.id.desc())
        .limit(1)
    ).one_or_none()
    return None if reading is None else _view(session, reading)


def set_true_text(session: Session, *, telegram_id: int, reading_id: int, text: str | None) -> None:
    """Keep the user's whole answer for a reading (e.g. "42711", spaces ignored) when it has a
    different number of digits than were read, or clear it (None). Per-digit labels are left as
    they are: the answer cannot be matched to the crops. Raises UnknownSample, NotYourSample,
    InvalidLabel (not 1 to ``TRUE_TEXT_MAX`` digits 0-9)."""
    reading = owned_reading(session, telegram_id=telegram_id, reading_id=reading_id)
    if text is not None:
        text = "".join(text.split())
        if not text.isascii() or not text.isdigit():
            raise InvalidLabel(f"not digits: {text!r}")
        if len(text) > TRUE_TEXT_MAX:
            raise InvalidLabel(f"{len(text)} digits, at most {TRUE_TEXT_MAX} are kept")
    reading.true_text = text
    session.flush()


def parse_digit(value: int | str) -> int:
    """A label digit 0-9 from an int or a one-character string; InvalidLabel otherwise."""
    try:
        digit = int(value)
    except (TypeError, ValueError):
        raise InvalidLabel(f"not a digit: {value!r}") from None
    if (isinstance(value, str) and len(value.strip()) != 1) or not 0 <= digit <= 9:
        raise InvalidLabel(f"not a digit 0-9: {value!r}")
    return digit
