"""The database schema (SQLAlchemy 2.0, typed). Every row that holds user data carries ``user_id``.

Timestamps are stored in UTC and always come back timezone-aware (SQLite returns naive values;
:class:`UTCDateTime` normalises them). Migrations in ``migrations/versions`` mirror this module.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, deferred, mapped_column

from storage.records import TRUE_TEXT_MAX

# Telegram ids need 64 bits; SQLite only auto-increments a column declared exactly INTEGER.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Model version statuses and job states, spelled once.
CANDIDATE, ACTIVE, REJECTED, RETIRED = "candidate", "active", "rejected", "retired"
QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
CONFIRMED, CORRECTED = "confirmed", "corrected"
INBOX_PENDING, INBOX_DONE, INBOX_FAILED = "pending", "done", "failed"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every backend (PostgreSQL timestamptz; SQLite naive-UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    telegram_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    language: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Continual learning bookkeeping, kept exact by the label functions: the number of current
    # labels created at or after ``finetune_started_at`` (the start of the last fine-tune run).
    labels_since_finetune: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    finetune_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the user first sent /start in a private chat with the bot: their consent to have the photos
    # they post in groups read (and stored). None: the bot ignores their photos in groups.
    started_private_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index(None, "labels_since_finetune"),)


class ProcessedUpdate(Base):
    """Telegram update ids already handled (a redelivered update must store nothing twice)."""

    __tablename__ = "processed_updates"

    update_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    processed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class InboxUpdate(Base):
    """A Telegram update written down before it is acknowledged (the durable inbox).

    ``payload`` is the update as Telegram sent it (a JSON object); it is kept only while the update
    is pending (and, for an operator to look at, when it was given up), and cleared once handled.
    ``attempts`` counts the starts that found the update still pending and handled it again.
    ``owner`` names the process host that took it, ``claimed_at`` when it took it or last renewed its
    lease (its heartbeat): a pending update whose lease expired (its replica died) is taken over by
    any other replica.
    ``reading_id`` is the reading the update stored, so a replay can answer a stored photo."""

    __tablename__ = "update_inbox"

    update_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    state: Mapped[str] = mapped_column(String(16), default=INBOX_PENDING)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    owner: Mapped[str] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    reading_id: Mapped[int | None] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint("state IN ('pending', 'done', 'failed')", name="state_known"),
        Index(None, "state", "owner", "update_id"),
        Index(None, "finished_at"),
        Index(None, "state", "claimed_at"),
    )


class Reading(Base):
    """One recognised photo: where it came from and the bot's reply to it.

    ``true_text`` is the user's whole answer when it has a different number of digits than were
    read (segmentation got the count wrong): it cannot be matched to the crops, so it labels none."""

    __tablename__ = "readings"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    chat_id: Mapped[int] = mapped_column(BigInteger)
    file_id: Mapped[str] = mapped_column(String(255))
    file_unique_id: Mapped[str] = mapped_column(String(64))
    bot_message_id: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(32), default="ok")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    true_text: Mapped[str | None] = mapped_column(String(TRUE_TEXT_MAX))

    __table_args__ = (
        Index(None, "user_id", "id"),
        Index(None, "user_id", "chat_id", "bot_message_id"),
    )


class Sample(Base):
    """One digit crop: the normalised 28x28 image (784 bytes, row-major uint8)."""

    __tablename__ = "samples"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    reading_id: Mapped[int] = mapped_column(ForeignKey("readings.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(SmallInteger)
    image: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("reading_id", "position"),
        Index(None, "user_id", "id"),
        CheckConstraint("position >= 0", name="position_non_negative"),
    )


class Prediction(Base):
    """The answer given for a sample, which model gave it, and the base model's own answer."""

    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    digit: Mapped[int] = mapped_column(SmallInteger)
    confidence: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(16))  # "base" | "personal"
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    base_digit: Mapped[int] = mapped_column(SmallInteger)
    base_confidence: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint("digit BETWEEN 0 AND 9", name="digit_range"),
        CheckConstraint("base_digit BETWEEN 0 AND 9", name="base_digit_range"),
        CheckConstraint("source IN ('base', 'personal')", name="source_known"),
    )


class Label(Base):
    """A user's answer for a sample. The current one has ``superseded_at`` NULL; history is kept.

    ``answer``, ``base_answer``, ``personal`` and ``recorded_at`` copy the sample's prediction
    (which never changes) so that a user's stats read one covering index, without a join.
    """

    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    digit: Mapped[int] = mapped_column(SmallInteger)
    kind: Mapped[str] = mapped_column(String(16))  # "confirmed" | "corrected"
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    superseded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    answer: Mapped[int] = mapped_column(SmallInteger)  # the prediction's digit
    base_answer: Mapped[int] = mapped_column(SmallInteger)  # the base model's digit
    personal: Mapped[bool] = mapped_column(Boolean)  # answered by a personal model
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)  # when the photo was recognised

    __table_args__ = (
        CheckConstraint("digit BETWEEN 0 AND 9", name="digit_range"),
        CheckConstraint("kind IN ('confirmed', 'corrected')", name="kind_known"),
        # At most one current label per sample, on both backends.
        Index(
            "uq_labels_current_sample",
            "sample_id",
            unique=True,
            sqlite_where=text("superseded_at IS NULL"),
            postgresql_where=text("superseded_at IS NULL"),
        ),
        Index(None, "sample_id", "id"),
        # Covers user_stats and training_set's label side: a user's current labels in order.
        Index(
            "ix_labels_current_user_stats",
            "user_id",
            "sample_id",
            "digit",
            "answer",
            "base_answer",
            "personal",
            "recorded_at",
            sqlite_where=text("superseded_at IS NULL"),
            postgresql_where=text("superseded_at IS NULL"),
        ),
    )


class ModelVersion(Base):
    """A user's personal model. Weights live in ``weights`` (DB blob) or under ``weights_path``."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)  # 1, 2, ... per user
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(16), default=CANDIDATE)
    weights: Mapped[bytes | None] = deferred(mapped_column(LargeBinary))
    weights_path: Mapped[str | None] = mapped_column(String(512))  # relative to Settings.weights_dir
    weights_size: Mapped[int] = mapped_column(Integer)
    weights_sha256: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("user_id", "version"),
        CheckConstraint(
            "status IN ('candidate', 'active', 'rejected', 'retired')", name="status_known"
        ),
        # Exactly one active model per user, ever: the database refuses a second one.
        Index(
            "uq_model_versions_one_active",
            "user_id",
            unique=True,
            sqlite_where=text("status = 'active'"),
            postgresql_where=text("status = 'active'"),
        ),
    )


class FinetuneJob(Base):
    """One fine-tune job for one user (a retry re-queues the same row; ``attempts`` counts runs)."""

    __tablename__ = "finetune_jobs"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(16), default=QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    outcome: Mapped[str | None] = mapped_column(String(32))  # e.g. "promoted", "rejected", "skipped"
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )

    __table_args__ = (
        CheckConstraint(
            "state IN ('queued', 'running', 'succeeded', 'failed')", name="state_known"
        ),
        # Never two open jobs for one user.
        Index(
            "uq_finetune_jobs_one_open",
            "user_id",
            unique=True,
            sqlite_where=text("state IN ('queued', 'running')"),
            postgresql_where=text("state IN ('queued', 'running')"),
        ),
        Index(None, "user_id", "id"),
        Index(None, "state", "id"),
    )

