"""Job-row operations the worker needs beyond storage.repository: lease, fencing, outbox.

* Lease: ``FinetuneJob.started_at`` is set when a job is claimed and renewed by the running
  worker's heartbeat, so ``storage.repository.requeue_stale_jobs(started_before=now - lease)``
  re-queues exactly the jobs whose worker stopped beating (died, or lost its database link).
  The time spent training is in the job's metrics (``train_seconds``).
* Fencing: the attempt number a worker got when it claimed the job. Every later write of that
  worker (heartbeat, finish, failure) first checks, under a row lock, that the job is still
  running *that* attempt; a worker whose job was re-queued and claimed again writes nothing.
* Outbox: a job finishes with outcome "promoted" or "rejected"; the process that owns the notify
  callback switches it to "promoted+notified" / "rejected+notified" with a compare-and-set before
  telling the user, so each outcome is told once, whichever process ran the job (a rejected one
  as "kept your current model: not better on your N digits", issue 12).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.gate import FinetuneMetrics
from storage.models import QUEUED, RUNNING, SUCCEEDED, FinetuneJob, User, utcnow

PROMOTED_OUTCOME = "promoted"
NOTIFIED_OUTCOME = "promoted+notified"
REJECTED_OUTCOME = "rejected"
REJECTED_NOTIFIED_OUTCOME = "rejected+notified"
NOTIFIED = {PROMOTED_OUTCOME: NOTIFIED_OUTCOME, REJECTED_OUTCOME: REJECTED_NOTIFIED_OUTCOME}


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
    summary: dict[str, Any]  # summary_of(...): "promoted" says which outcome it is
    outcome: str = PROMOTED_OUTCOME  # PROMOTED_OUTCOME | REJECTED_OUTCOME


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
    """Finished jobs whose outcome (promoted or rejected) the user has not been told yet."""
    rows = session.execute(
        select(FinetuneJob.id, FinetuneJob.metrics, FinetuneJob.outcome, User.telegram_id)
        .join(User, User.id == FinetuneJob.user_id)
        .where(FinetuneJob.state == SUCCEEDED, FinetuneJob.outcome.in_(tuple(NOTIFIED)),
               FinetuneJob.finished_at >= since)
        .order_by(FinetuneJob.id).limit(limit)
    ).all()
    return [PendingNotice(row.id, row.telegram_id,
                          summary_of(row.metrics or {}, promoted=row.outcome == PROMOTED_OUTCOME), row.outcome)
            for row in rows]


def mark_notified(session: Session, *, job_id: int) -> bool:
    """Compare-and-set "promoted" -> "promoted+notified" (or "rejected" -> "rejected+notified");
    False when another process did it."""
    for waiting, told in NOTIFIED.items():
        result = session.execute(
            update(FinetuneJob)
            .where(FinetuneJob.id == job_id, FinetuneJob.outcome == waiting)
            .values(outcome=told)
            .execution_options(synchronize_session=False)
        )
        if int(getattr(result, "rowcount", 0)) == 1:
            return True
    return False


def unmark_notified(session: Session, *, job_id: int) -> None:
    """The notify callback failed: put the outcome back in the outbox for the next sweep."""
    for waiting, told in NOTIFIED.items():
        session.execute(
            update(FinetuneJob)
            .where(FinetuneJob.id == job_id, FinetuneJob.outcome == told)
            .values(outcome=waiting)
            .execution_options(synchronize_session=False)
        )


def summary_of(metrics: dict[str, Any], *, promoted: bool = True) -> dict[str, Any]:
    """What the bot tells the user about a fine-tune's outcome (docs/INTERFACES.md "## worker"),
    from the job's stored metrics (``FinetuneMetrics``; rows of the old code read too)."""
    m = FinetuneMetrics.from_dict(metrics)
    return {
        "promoted": promoted,
        "version": m.version,
        "labels": m.n_labels,
        "accuracy_before": m.heldout_before,
        "accuracy_after": m.heldout_after,  # the candidate with its base fallback: what is served
        "combined_accuracy": m.heldout_after,
        "personal_accuracy": m.heldout_personal,
        "mnist_accuracy": m.mnist_accuracy,
        "heldout_samples": m.n_holdout or 0,
        "cross_validated": m.folds is not None,
        "trained": m.heldout_after is not None,  # False: too few labels, nothing was trained
        "reason": m.reason,
    }
