"""Job-row operations the worker needs beyond storage.repository: lease, fencing, outbox.

* Lease: ``FinetuneJob.started_at`` is set when a job is claimed and renewed by the running
  worker's heartbeat, so ``storage.repository.requeue_stale_jobs(started_before=now - lease)``
  re-queues exactly the jobs whose worker stopped beating (died, or lost its database link).
  The time spent training is in the job's metrics (``train_seconds``).
* Fencing: the attempt number a worker got when it claimed the job. Every later write of that
  worker (heartbeat, finish, failure) first checks, under a row lock, that the job is still
  running *that* attempt; a worker whose job was re-queued and claimed again writes nothing.
* Outbox: a job that promoted a model finishes with outcome "promoted"; the process that owns
  the notify callback switches it to "promoted+notified" with a compare-and-set before telling
  the user, so each promotion is announced once, whichever process ran the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from storage.models import QUEUED, RUNNING, SUCCEEDED, FinetuneJob, User, utcnow

PROMOTED_OUTCOME = "promoted"
NOTIFIED_OUTCOME = "promoted+notified"


@dataclass(frozen=True)
class Claim:
    job_id: int
    user_id: int
    telegram_id: int
    attempt: int


@dataclass(frozen=True)
class PendingNotice:
    job_id: int
    telegram_id: int
    summary: dict[str, Any]


def holds(session: Session, *, job_id: int, attempt: int) -> bool:
    """True when the job is running this attempt; locks the row for the rest of the transaction."""
    job = session.scalars(
        select(FinetuneJob).where(FinetuneJob.id == job_id).with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    return job is not None and job.state == RUNNING and job.attempts == attempt


def renew_lease(session: Session, *, job_id: int, attempt: int) -> bool:
    """The heartbeat: push the lease forward; False when this worker no longer holds the job."""
    result = session.execute(
        update(FinetuneJob)
        .where(FinetuneJob.id == job_id, FinetuneJob.state == RUNNING, FinetuneJob.attempts == attempt)
        .values(started_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0)) == 1


def queued_jobs(session: Session, *, limit: int = 1000) -> dict[int, int]:
    """Queued job id -> its attempts so far (a job re-queued after a run has more than when first queued)."""
    rows = session.execute(select(FinetuneJob.id, FinetuneJob.attempts).where(FinetuneJob.state == QUEUED)
                           .order_by(FinetuneJob.id).limit(limit))
    return {int(job_id): int(attempts) for job_id, attempts in rows}


def open_job_id(session: Session, *, user_id: int) -> int | None:
    return session.scalar(select(FinetuneJob.id).where(
        FinetuneJob.user_id == user_id, FinetuneJob.state.in_((QUEUED, RUNNING))))


def pending_notices(session: Session, *, since: datetime, limit: int = 100) -> list[PendingNotice]:
    rows = session.execute(
        select(FinetuneJob.id, FinetuneJob.metrics, User.telegram_id)
        .join(User, User.id == FinetuneJob.user_id)
        .where(FinetuneJob.state == SUCCEEDED, FinetuneJob.outcome == PROMOTED_OUTCOME,
               FinetuneJob.finished_at >= since)
        .order_by(FinetuneJob.id).limit(limit)
    ).all()
    return [PendingNotice(row.id, row.telegram_id, summary_of(row.metrics or {})) for row in rows]


def mark_notified(session: Session, *, job_id: int) -> bool:
    """Compare-and-set "promoted" -> "promoted+notified"; False when another process did it."""
    result = session.execute(
        update(FinetuneJob)
        .where(FinetuneJob.id == job_id, FinetuneJob.outcome == PROMOTED_OUTCOME)
        .values(outcome=NOTIFIED_OUTCOME)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0)) == 1


def unmark_notified(session: Session, *, job_id: int) -> None:
    """The notify callback failed: put the promotion back in the outbox for the next sweep."""
    session.execute(
        update(FinetuneJob)
        .where(FinetuneJob.id == job_id, FinetuneJob.outcome == NOTIFIED_OUTCOME)
        .values(outcome=PROMOTED_OUTCOME)
        .execution_options(synchronize_session=False)
    )


def summary_of(metrics: dict[str, Any]) -> dict[str, Any]:
    """What the bot tells the user about a promotion (see docs/INTERFACES.md "## worker")."""
    def number(key: str) -> float | None:
        value = metrics.get(key)
        return float(value) if isinstance(value, int | float) else None

    return {
        "version": metrics.get("version"),
        "labels": int(metrics.get("n_labels", 0) or 0),
        "accuracy_before": number("heldout_before"),
        "accuracy_after": number("heldout_after"),
        "combined_accuracy": number("heldout_combined"),
        "mnist_accuracy": number("mnist_accuracy"),
        "heldout_samples": int(metrics.get("n_holdout", 0) or 0),
    }
