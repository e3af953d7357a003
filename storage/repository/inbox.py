"""The durable inbox: Telegram updates written down before they are acknowledged, marked done once
handled, replayed when a process died while handling them, and purged after a while.

An update is a plain JSON object here (no Telegram types). The caller decides who it is
(``owner``: one name per bot host). A pending update is leased, as fine-tune jobs are
(storage/repository/jobs.py): ``claimed_at`` is set when it is taken and renewed by its owner's heartbeat
(:func:`inbox_heartbeat`); one whose lease expired (its replica was killed, or replaced under another
host name) is taken over by any replica (:func:`inbox_take_over`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, null, or_, select, update
from sqlalchemy.orm import Session

from storage.models import INBOX_DONE, INBOX_FAILED, INBOX_PENDING, InboxUpdate, utcnow
from storage.repository._common import insert_ignore

NEW, RETRY, GIVEN_UP = "new", "retry", "given_up"


@dataclass(frozen=True)
class PendingUpdate:
    update_id: int
    payload: dict[str, Any]
    attempts: int  # handlings that did not finish (raised, or their process died), the last included


@dataclass(frozen=True)
class Replay:
    """What a start-up found in the inbox: updates to handle again, and those given up on."""

    pending: list[PendingUpdate]
    given_up: list[int]


def inbox_receive(session: Session, *, update_id: int, payload: dict[str, Any], owner: str,
                  max_attempts: int, stale_before: datetime | None = None) -> str:
    """Write an update down before it is acknowledged (idempotent by ``update_id``). Returns

    * "new": it was not there; it is now pending, to be handled;
    * "retry": its last handling raised (state "failed") fewer than ``max_attempts`` times, and it is
      delivered again: pending again, to be handled;
    * "pending": being handled already (or left by a process that died: replayed at start-up);
    * "done": handled; "given_up": it failed ``max_attempts`` times.

    A done or failed row that finished before ``stale_before`` (now minus the retention, at least a
    day) belongs to an earlier update with the same id: Telegram never redelivers an update more
    than 24 hours old, and picks ids at random again after a week without updates. It is taken over
    by this one ("new"), as if it had been purged already (see ``mark_update_processed``).
    """
    if insert_ignore(session, InboxUpdate.__table__, {  # type: ignore[arg-type]
            "update_id": update_id, "state": INBOX_PENDING, "payload": payload, "owner": owner,
            "attempts": 0, "received_at": utcnow(), "claimed_at": utcnow()}):
        return NEW
    row = session.scalars(
        select(InboxUpdate).where(InboxUpdate.update_id == update_id).with_for_update()
    ).one_or_none()
    if row is None:  # purged in between: nothing says it was handled
        return inbox_receive(session, update_id=update_id, payload=payload, owner=owner, max_attempts=max_attempts,
                             stale_before=stale_before)
    if (row.state != INBOX_PENDING and stale_before is not None and row.finished_at is not None
            and row.finished_at < stale_before):
        row.state, row.owner, row.payload, row.attempts = INBOX_PENDING, owner, payload, 0
        row.reading_id, row.received_at, row.finished_at, row.claimed_at = None, utcnow(), None, utcnow()
        session.flush()
        return NEW
    if row.state == INBOX_FAILED:
        if row.attempts >= max_attempts:
            return GIVEN_UP
        row.state, row.owner, row.payload, row.finished_at = INBOX_PENDING, owner, payload, None
        row.claimed_at = utcnow()
        session.flush()
        return RETRY
    return str(row.state)


def inbox_failed(session: Session, *, update_id: int, max_attempts: int) -> bool:
    """Its handling raised (the user was asked to try again): count the attempt and park it as
    "failed", to be handled again only if Telegram delivers it again. True when this was the
    ``max_attempts``-th failure (given up: later deliveries are ignored)."""
    row = session.scalars(
        select(InboxUpdate).where(InboxUpdate.update_id == update_id).with_for_update()
    ).one_or_none()
    if row is None or row.state != INBOX_PENDING:
        return False
    row.attempts += 1
    row.state, row.finished_at = INBOX_FAILED, utcnow()
    session.flush()
    return row.attempts >= max_attempts


def inbox_done(session: Session, *, update_ids: Iterable[int]) -> int:
    """Mark handled updates done and drop their content; returns how many were pending."""
    ids = list(update_ids)
    if not ids:
        return 0
    result = session.execute(
        update(InboxUpdate)
        .where(InboxUpdate.update_id.in_(ids), InboxUpdate.state == INBOX_PENDING)
        .values(state=INBOX_DONE, payload=null(), finished_at=utcnow())
    )
    return int(getattr(result, "rowcount", 0))


def inbox_take_pending(session: Session, *, owner: str | None, max_attempts: int,
                       limit: int = 10_000) -> Replay:
    """At start-up: the updates still pending (their process died before finishing them) of this
    ``owner`` (None: of every owner), oldest first, each with ``attempts`` counted up. One whose
    handling already did not finish ``max_attempts`` times is given up on (state "failed", content
    kept for an operator until purged)."""
    query = select(InboxUpdate).where(InboxUpdate.state == INBOX_PENDING)
    if owner is not None:
        query = query.where(InboxUpdate.owner == owner)
    rows = session.scalars(
        query.order_by(InboxUpdate.update_id)
        .limit(limit)
        .with_for_update()
    ).all()
    return _take(session, rows, owner=None, max_attempts=max_attempts)


def inbox_take_over(session: Session, *, owner: str, lease_before: datetime, max_attempts: int,
                    limit: int = 1000, update_ids: Sequence[int] | None = None) -> Replay:
    """Take the pending updates whose lease expired (not renewed since ``lease_before``: the replica
    that took them died, or was replaced under another name) into ``owner``'s hands, oldest first,
    each with ``attempts`` counted up (given up on after ``max_attempts``, as at a start-up). Rows
    another replica is taking over at the same moment are skipped (``SKIP LOCKED``); once taken,
    their lease is fresh, so each is taken by one replica only. ``update_ids``: only these (one
    Telegram delivered again)."""
    query = select(InboxUpdate).where(
        InboxUpdate.state == INBOX_PENDING,
        or_(InboxUpdate.claimed_at.is_(None), InboxUpdate.claimed_at < lease_before))
    if update_ids is not None:
        query = query.where(InboxUpdate.update_id.in_(list(update_ids)))
    rows = session.scalars(
        query
        .order_by(InboxUpdate.update_id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    return _take(session, rows, owner=owner, max_attempts=max_attempts)


def _take(session: Session, rows: Sequence[InboxUpdate], *, owner: str | None, max_attempts: int) -> Replay:
    now = utcnow()
    pending: list[PendingUpdate] = []
    given_up: list[int] = []
    for row in rows:
        row.attempts += 1
        if row.attempts >= max_attempts or row.payload is None:
            row.state, row.finished_at = INBOX_FAILED, now
            given_up.append(row.update_id)
            continue
        row.claimed_at = now
        if owner is not None:
            row.owner = owner
        pending.append(PendingUpdate(row.update_id, dict(row.payload), row.attempts))
    session.flush()
    return Replay(pending, given_up)


def inbox_heartbeat(session: Session, *, owner: str, update_ids: Iterable[int]) -> int:
    """Renew the lease of the pending updates ``owner`` holds among these; returns how many it still
    holds (one taken over meanwhile by another replica is not renewed)."""
    ids = list(update_ids)
    if not ids:
        return 0
    result = session.execute(
        update(InboxUpdate)
        .where(InboxUpdate.update_id.in_(ids), InboxUpdate.state == INBOX_PENDING, InboxUpdate.owner == owner)
        .values(claimed_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0))


def inbox_pending_count(session: Session) -> int:
    """Updates in the durable inbox not yet handled (all replicas)."""
    return int(session.scalar(select(func.count()).select_from(InboxUpdate)
                              .where(InboxUpdate.state == INBOX_PENDING)) or 0)


def inbox_link_reading(session: Session, *, update_id: int, reading_id: int) -> None:
    """Note the reading an update stored (in the same transaction), so that a replay of it after a
    crash can answer the stored reading instead of staying silent."""
    session.execute(update(InboxUpdate).where(InboxUpdate.update_id == update_id).values(reading_id=reading_id))


def inbox_reading(session: Session, *, update_id: int) -> int | None:
    """The reading this update stored, if any."""
    return session.scalar(select(InboxUpdate.reading_id).where(InboxUpdate.update_id == update_id))


def inbox_states(session: Session, *, update_ids: Sequence[int]) -> dict[int, str]:
    """The state of each of these updates that the inbox holds (for tests and operators)."""
    rows = session.execute(
        select(InboxUpdate.update_id, InboxUpdate.state).where(InboxUpdate.update_id.in_(list(update_ids)))
    ).all()
    return {int(update_id): str(state) for update_id, state in rows}


def inbox_purge(session: Session, *, finished_before: datetime) -> int:
    """Delete done and failed updates finished before ``finished_before``; returns how many."""
    result = session.execute(
        delete(InboxUpdate).where(InboxUpdate.state != INBOX_PENDING, InboxUpdate.finished_at < finished_before)
    )
    return int(getattr(result, "rowcount", 0))


def inbox_clear(session: Session) -> int:
    """Forget the whole inbox (a fresh local emulator starts its update ids over)."""
    result = session.execute(delete(InboxUpdate))
    return int(getattr(result, "rowcount", 0))


def _sent_by(payload: Any, telegram_id: int) -> bool:
    """True when a sender or chat anywhere in the update is this Telegram id."""
    if isinstance(payload, dict):
        for key, value in payload.items():
            if (key in ("from", "chat", "user", "sender_chat") and isinstance(value, dict)
                    and value.get("id") == telegram_id):
                return True
            if _sent_by(value, telegram_id):
                return True
    elif isinstance(payload, list):
        return any(_sent_by(item, telegram_id) for item in payload)
    return False


def inbox_forget_sender(session: Session, *, telegram_id: int) -> int:
    """Drop the content of finished updates (kept when given up on) that came from this user, for
    /forget. Pending ones are being handled right now (the /forget itself among them) and lose their
    content when done. Returns how many were cleared."""
    rows = session.scalars(
        select(InboxUpdate).where(InboxUpdate.state != INBOX_PENDING, InboxUpdate.payload.is_not(None))
    ).all()
    cleared = 0
    for row in rows:
        if _sent_by(row.payload, telegram_id):
            row.payload = None
            cleared += 1
    session.flush()
    return cleared
