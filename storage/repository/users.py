"""Users, processed Telegram updates, and forgetting a user."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.orm import Session

from storage import weights
from storage.models import (
    INBOX_PENDING,
    FinetuneJob,
    InboxUpdate,
    Label,
    ModelVersion,
    Prediction,
    ProcessedUpdate,
    Reading,
    Sample,
    User,
    utcnow,
)
from storage.repository._common import insert_ignore
from storage.repository.inbox import inbox_forget_sender


def get_user(session: Session, *, telegram_id: int) -> User | None:
    """The user with this Telegram id, or None."""
    return session.scalars(select(User).where(User.telegram_id == telegram_id)).one_or_none()


def get_or_create_user(session: Session, *, telegram_id: int, language: str | None = None) -> User:
    """The user with this Telegram id, created if new (safe when two updates race).

    ``language`` (Telegram's ``language_code``) is stored for a new user only; an existing user's
    choice is changed with :func:`set_user_language`.
    """
    user = get_user(session, telegram_id=telegram_id)
    if user is not None:
        return user
    insert_ignore(
        session,
        User.__table__,  # type: ignore[arg-type]
        {"telegram_id": telegram_id, "language": language, "created_at": utcnow(),
         "labels_since_finetune": 0},
    )
    user = get_user(session, telegram_id=telegram_id)
    assert user is not None
    return user


def set_user_language(session: Session, *, telegram_id: int, language: str | None) -> User:
    """Store the user's preferred language (None: follow Telegram's language again)."""
    user = get_or_create_user(session, telegram_id=telegram_id)
    user.language = language
    session.flush()
    return user


def mark_started_private(session: Session, *, telegram_id: int) -> User:
    """Record that the user started the bot in a private chat (created if new): their consent to have
    the photos they post in groups read. The first time is kept."""
    user = get_or_create_user(session, telegram_id=telegram_id)
    if user.started_private_at is None:
        user.started_private_at = utcnow()
        session.flush()
    return user


def started_private(session: Session, *, telegram_id: int) -> bool:
    """True when the user has started the bot in a private chat (and not been forgotten since)."""
    started = session.scalar(select(User.started_private_at).where(User.telegram_id == telegram_id))
    return started is not None


def mark_update_processed(session: Session, *, update_id: int, stale_before: datetime | None = None) -> bool:
    """Remember a Telegram update id; False when it was already processed (a redelivery).

    Call it in the same transaction as the writes the update causes, so both happen or neither.

    ``stale_before`` (now minus the inbox retention, at least a day): a marker written before it is
    left by an earlier update that had the same id, and this update is processed (the marker taken
    over). Telegram keeps an undelivered update for at most 24 hours, so nothing older can be
    redelivered, and it picks update ids at random again after a week without updates, so an old id
    can come back on a new update. A time window, rather than a fingerprint of the content, because
    every caller knows the update id but not always what identifies its content, and it needs no
    new column. The one marker that must outlive the window is that of an update still pending in
    the inbox since before the marker (its process died after storing it; replayed after a long
    stop): that stays a duplicate.
    """
    if insert_ignore(
        session,
        ProcessedUpdate.__table__,  # type: ignore[arg-type]
        {"update_id": update_id, "processed_at": utcnow()},
    ):
        return True
    if stale_before is None:
        return False
    replay = exists().where(InboxUpdate.update_id == update_id, InboxUpdate.state == INBOX_PENDING,
                            InboxUpdate.received_at <= ProcessedUpdate.processed_at)
    # One statement: of two deliveries racing for a stale marker, the second sees it fresh (row lock).
    result = session.execute(
        update(ProcessedUpdate)
        .where(ProcessedUpdate.update_id == update_id, ProcessedUpdate.processed_at < stale_before, ~replay)
        .values(processed_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0)) == 1


def prune_processed_updates(session: Session, *, older_than: datetime) -> int:
    """Delete remembered update ids processed before ``older_than`` (the inbox's retention: nothing
    that old can be redelivered), except those of updates still pending in the inbox (a replay after
    a long stop still needs them); returns how many."""
    pending = exists().where(InboxUpdate.update_id == ProcessedUpdate.update_id,
                             InboxUpdate.state == INBOX_PENDING)
    result = session.execute(
        delete(ProcessedUpdate).where(ProcessedUpdate.processed_at < older_than, ~pending)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0))


def forget_user(session: Session, *, telegram_id: int) -> int:
    """Delete every row of this user (samples, predictions, labels, readings, jobs, models, the user
    itself) and their weight files (unlinked once the transaction commits). Returns rows deleted: 0
    exactly when nothing is stored about them (a known user's own row counts), e.g. forgotten already."""
    user_id = session.scalar(select(User.id).where(User.telegram_id == telegram_id))
    if user_id is None:
        return 0
    paths = list(
        session.scalars(
            select(ModelVersion.weights_path).where(
                ModelVersion.user_id == user_id, ModelVersion.weights_path.is_not(None)
            )
        )
    )
    deleted = 0
    # Children first, explicitly: correct even where ON DELETE CASCADE is not enforced.
    for model in (Label, Prediction, FinetuneJob, Sample, Reading):
        result = session.execute(delete(model).where(model.user_id == user_id))
        deleted += int(getattr(result, "rowcount", 0))
    # A version's parent may be another of this user's versions: unlink before deleting.
    session.execute(
        update(ModelVersion).where(ModelVersion.user_id == user_id).values(parent_id=None)
        .execution_options(synchronize_session=False)
    )
    for statement in (delete(ModelVersion).where(ModelVersion.user_id == user_id),
                      delete(User).where(User.id == user_id)):
        result = session.execute(statement)
        deleted += int(getattr(result, "rowcount", 0))
    weights.delete_after_commit(session, [p for p in paths if p])
    inbox_forget_sender(session, telegram_id=telegram_id)  # not rows of the user: not counted
    return deleted


def count_user_rows(session: Session, *, user_id: int) -> dict[str, int]:
    """Rows per table that belong to ``user_id`` (used to prove that forget leaves nothing)."""
    counts = {
        model.__tablename__: session.scalar(
            select(func.count()).select_from(model).where(model.user_id == user_id)
        )
        or 0
        for model in (Label, Prediction, FinetuneJob, Sample, Reading, ModelVersion)
    }
    counts["users"] = session.scalar(select(func.count()).select_from(User).where(User.id == user_id)) or 0
    return counts
