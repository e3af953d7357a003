"""Fine-tune jobs: every query on ``finetune_jobs``, and the rules of when a job is queued.

State machine of a job row: ``queued --claim--> running --finish--> succeeded | failed``, and
``running --> queued`` again after an error with attempts left or when its lease expired.

* Lease: ``started_at`` is set when a job is claimed and renewed by the running worker's heartbeat
  (:func:`renew_lease`), so :func:`requeue_stale_jobs` re-queues exactly the jobs whose worker
  stopped beating (died, or lost its database link).
* Fencing: the attempt number a worker got when it claimed the job (:class:`Claim`). Every later
  write of that worker first checks, under a row lock, that the job is still running *that*
  attempt (:func:`holds`); a worker whose job was re-queued and claimed again writes nothing.
* Outbox: a job finishes with outcome "promoted" or "rejected"; the process that tells the user
  switches it to "promoted+notified" / "rejected+notified" with a compare-and-set first
  (:func:`mark_notified`), so each outcome is told once, whichever process ran the job.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.errors import InvalidTransition, UnknownJob
from storage.models import FAILED, QUEUED, RUNNING, SUCCEEDED, FinetuneJob, ModelVersion, User, utcnow
from storage.records import Claim, FinetuneRequest, FinetuneStatus, PendingNotice
from storage.repository._common import lock_user
from storage.repository.labels import current_label_count
from storage.repository.model_versions import active_model_version

OPEN_STATES = (QUEUED, RUNNING)
PROMOTED_OUTCOME = "promoted"
NOTIFIED_OUTCOME = "promoted+notified"
REJECTED_OUTCOME = "rejected"
REJECTED_NOTIFIED_OUTCOME = "rejected+notified"
NOTIFIED = {PROMOTED_OUTCOME: NOTIFIED_OUTCOME, REJECTED_OUTCOME: REJECTED_NOTIFIED_OUTCOME}
# /train accepts fewer labels than the sweep waits for, but not so few that nothing can be learnt.
MIN_LABELS_ON_REQUEST = 5


# --- queueing --------------------------------------------------------------------------------------

def users_due_for_finetune(session: Session, *, min_labels: int, limit: int = 1000) -> list[int]:
    """Ids of users with at least ``min_labels`` current labels created since their last fine-tune
    run started (or ever, if none) and no job queued or running; most new labels first."""
    open_job = exists().where(FinetuneJob.user_id == User.id, FinetuneJob.state.in_(OPEN_STATES))
    return list(
        session.scalars(
            select(User.id)
            .where(User.labels_since_finetune >= min_labels, ~open_job)
            .order_by(User.labels_since_finetune.desc(), User.id)
            .limit(limit)
        )
    )


def create_finetune_job(session: Session, *, user_id: int) -> FinetuneJob | None:
    """Queue a fine-tune job for the user; None if one is already queued or running (the database
    refuses a second open job, so concurrent sweeps cannot double-queue)."""
    if lock_user(session, user_id) is None:
        return None
    if open_job_id(session, user_id=user_id) is not None:
        return None
    job = FinetuneJob(user_id=user_id, state=QUEUED, attempts=0, created_at=utcnow(), metrics={})
    try:
        with session.begin_nested():
            session.add(job)
    except IntegrityError:
        return None
    return job


def open_job_id(session: Session, *, user_id: int) -> int | None:
    """The user's queued or running job, if any."""
    return session.scalar(select(FinetuneJob.id).where(
        FinetuneJob.user_id == user_id, FinetuneJob.state.in_(OPEN_STATES)))


def request_job(session: Session, *, telegram_id: int, min_labels: int) -> FinetuneRequest:
    """/train: queue a job now if the user has a few new labels (``min_labels`` is what the sweep
    waits for; a request needs at most ``MIN_LABELS_ON_REQUEST``), else say why not."""
    needed = min(MIN_LABELS_ON_REQUEST, min_labels)
    user = session.scalars(select(User).where(User.telegram_id == telegram_id)).one_or_none()
    if user is None:
        return FinetuneRequest(False, "unknown_user", needed=needed)
    labels = current_label_count(session, user_id=user.id)
    open_job = open_job_id(session, user_id=user.id)
    if open_job is not None:
        return FinetuneRequest(True, "already_queued", open_job, labels, needed)
    if labels < needed:
        return FinetuneRequest(False, "not_enough_labels", None, labels, needed)
    if user.labels_since_finetune == 0 and user.finetune_started_at is not None:
        return FinetuneRequest(False, "no_new_labels", None, labels, needed)
    job = create_finetune_job(session, user_id=user.id)
    if job is None:
        return FinetuneRequest(True, "already_queued", open_job_id(session, user_id=user.id), labels, needed)
    return FinetuneRequest(True, "queued", job.id, labels, needed)


def queued_jobs(session: Session, *, limit: int = 1000) -> dict[int, int]:
    """Queued job id -> its attempts so far (a job re-queued after a run has more than when first queued)."""
    rows = session.execute(select(FinetuneJob.id, FinetuneJob.attempts).where(FinetuneJob.state == QUEUED)
                           .order_by(FinetuneJob.id).limit(limit))
    return {int(job_id): int(attempts) for job_id, attempts in rows}


# --- running ---------------------------------------------------------------------------------------

def get_job(session: Session, *, job_id: int) -> FinetuneJob | None:
    return session.get(FinetuneJob, job_id)


def claim_job(session: Session, *, job_id: int | None = None) -> FinetuneJob | None:
    """Start a queued job (that one, or the oldest): state running, attempts + 1, and the user's
    "labels since last run" count restarts now. None when there is nothing to claim (or another
    worker claimed it first)."""
    query = select(FinetuneJob).where(FinetuneJob.state == QUEUED)
    query = query.where(FinetuneJob.id == job_id) if job_id is not None else query.order_by(FinetuneJob.id)
    job = session.scalars(
        query.limit(1).with_for_update(skip_locked=True).execution_options(populate_existing=True)
    ).one_or_none()
    if job is None:
        return None
    user = lock_user(session, job.user_id)
    now = utcnow()
    job.state, job.started_at, job.finished_at = RUNNING, now, None
    job.attempts += 1
    if user is not None:
        user.finetune_started_at = now
        user.labels_since_finetune = 0
    session.flush()
    return job


def claim(session: Session, *, job_id: int) -> Claim | None:
    """:func:`claim_job` as the worker holds it: with the user's Telegram id and the fencing token."""
    job = claim_job(session, job_id=job_id)
    if job is None:
        return None
    telegram_id = session.scalar(select(User.telegram_id).where(User.id == job.user_id))
    return Claim(job_id=job.id, user_id=job.user_id, telegram_id=telegram_id or 0, attempt=job.attempts)


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


def _running_job(session: Session, job_id: int) -> FinetuneJob:
    job = session.scalars(
        select(FinetuneJob).where(FinetuneJob.id == job_id).with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if job is None:
        raise UnknownJob(f"no fine-tune job {job_id}")
    if job.state != RUNNING:
        raise InvalidTransition(f"job {job_id} is {job.state}, not running")
    return job


def finish_job(
    session: Session, *, job_id: int, metrics: dict[str, Any], outcome: str,
    model_version_id: int | None = None,
) -> FinetuneJob:
    """Mark a running job succeeded with its metrics and outcome ("promoted", "rejected", ...)."""
    job = _running_job(session, job_id)
    job.state, job.finished_at, job.metrics, job.outcome = SUCCEEDED, utcnow(), dict(metrics), outcome
    job.model_version_id, job.error = model_version_id, None
    session.flush()
    return job


def fail_job(session: Session, *, job_id: int, error: str, retry: bool, max_attempts: int = 3) -> FinetuneJob:
    """Record a failure; with ``retry`` and attempts left the job is queued again, else failed."""
    job = _running_job(session, job_id)
    job.error = error[:10_000]
    if retry and job.attempts < max_attempts:
        job.state, job.started_at = QUEUED, None
    else:
        job.state, job.finished_at, job.outcome = FAILED, utcnow(), "failed"
    session.flush()
    return job


def requeue_stale_jobs(session: Session, *, started_before: datetime, max_attempts: int = 3) -> int:
    """Jobs left running by a worker that died: queue them again (or fail them when out of
    attempts). Returns how many were touched."""
    stale = list(session.scalars(
        select(FinetuneJob).where(FinetuneJob.state == RUNNING, FinetuneJob.started_at < started_before)
        .with_for_update(skip_locked=True)
    ))
    for job in stale:
        job.error = "worker stopped before finishing"
        if job.attempts < max_attempts:
            job.state, job.started_at = QUEUED, None
        else:
            job.state, job.finished_at, job.outcome = FAILED, utcnow(), "failed"
    session.flush()
    return len(stale)


# --- outcomes --------------------------------------------------------------------------------------

def pending_notices(session: Session, *, since: datetime, limit: int = 100) -> list[PendingNotice]:
    """Finished jobs whose outcome (promoted or rejected) the user has not been told yet."""
    rows = session.execute(
        select(FinetuneJob.id, FinetuneJob.metrics, FinetuneJob.outcome, User.telegram_id)
        .join(User, User.id == FinetuneJob.user_id)
        .where(FinetuneJob.state == SUCCEEDED, FinetuneJob.outcome.in_(tuple(NOTIFIED)),
               FinetuneJob.finished_at >= since)
        .order_by(FinetuneJob.id).limit(limit)
    ).all()
    return [PendingNotice(row.id, row.telegram_id, dict(row.metrics or {}), row.outcome == PROMOTED_OUTCOME)
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
    """Telling the user failed: put the outcome back in the outbox for the next sweep."""
    for waiting, told in NOTIFIED.items():
        session.execute(
            update(FinetuneJob)
            .where(FinetuneJob.id == job_id, FinetuneJob.outcome == told)
            .values(outcome=waiting)
            .execution_options(synchronize_session=False)
        )


def finetune_status(session: Session, *, telegram_id: int, job_id: int | None = None) -> FinetuneStatus | None:
    """Where the user's fine-tune job ``job_id`` (default: their latest) stands, or None."""
    query = select(FinetuneJob).join(User, User.id == FinetuneJob.user_id).where(User.telegram_id == telegram_id)
    if job_id is not None:
        query = query.where(FinetuneJob.id == job_id)
    job = session.scalars(query.order_by(FinetuneJob.created_at.desc(), FinetuneJob.id.desc()).limit(1)).first()
    if job is None:
        return None
    metrics = job.metrics or {}

    def number(key: str) -> float | None:
        value = metrics.get(key)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    version = metrics.get("version")
    if not isinstance(version, int) and job.model_version_id is not None:
        trained = session.get(ModelVersion, job.model_version_id)
        version = trained.version if trained is not None else None
    active = active_model_version(session, user_id=job.user_id)
    return FinetuneStatus(job.id, job.state, job.outcome, job.created_at, job.finished_at,
                          version if isinstance(version, int) else None, number("heldout_before"),
                          number("heldout_after"), active.version if active is not None else None)
