"""Continual learning: which users are due, fine-tune jobs, and personal model versions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage import weights as weight_store
from storage.errors import CorruptWeights, InvalidTransition, UnknownJob, UnknownModelVersion
from storage.models import (
    ACTIVE,
    CANDIDATE,
    FAILED,
    QUEUED,
    REJECTED,
    RETIRED,
    RUNNING,
    SUCCEEDED,
    FinetuneJob,
    ModelVersion,
    User,
    utcnow,
)
from storage.records import FinetuneStatus
from storage.repository._common import lock_user

OPEN_STATES = (QUEUED, RUNNING)


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
    if session.scalar(select(FinetuneJob.id).where(FinetuneJob.user_id == user_id,
                                                  FinetuneJob.state.in_(OPEN_STATES))):
        return None
    job = FinetuneJob(user_id=user_id, state=QUEUED, attempts=0, created_at=utcnow(), metrics={})
    try:
        with session.begin_nested():
            session.add(job)
    except IntegrityError:
        return None
    return job


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


def jobs_for_user(session: Session, *, user_id: int) -> list[FinetuneJob]:
    return list(session.scalars(select(FinetuneJob).where(FinetuneJob.user_id == user_id)
                                .order_by(FinetuneJob.id)))


# --- model versions -------------------------------------------------------------------------------

def add_model_version(
    session: Session, *, user_id: int, parent_id: int | None, weights: bytes, metrics: dict[str, Any],
    status: str = CANDIDATE,
) -> ModelVersion:
    """Store a new personal model (version numbers 1, 2, ... per user). The bytes go to the DB,
    or to a file under the session's ``weights_dir`` when one is configured. ``status`` may be
    "candidate" or "rejected"; promotion goes through :func:`promote_model_version`."""
    if status not in (CANDIDATE, REJECTED):
        raise InvalidTransition(f"a new model version is 'candidate' or 'rejected', not {status!r}")
    if lock_user(session, user_id) is None:
        raise UnknownModelVersion(f"no user {user_id}")
    if parent_id is not None:
        _version_of(session, user_id=user_id, version_id=parent_id)
    number = (session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.user_id == user_id))
              or 0) + 1
    digest = weight_store.sha256_hex(weights)
    in_files = weight_store.weights_dir_of(session) is not None
    version = ModelVersion(
        user_id=user_id, version=number, parent_id=parent_id, status=status,
        weights=None if in_files else bytes(weights),
        weights_path=weight_store.write_file(session, user_id=user_id, data=weights) if in_files else None,
        weights_size=len(weights), weights_sha256=digest, metrics=dict(metrics), created_at=utcnow(),
    )
    session.add(version)
    session.flush()
    return version


def _version_of(session: Session, *, user_id: int, version_id: int, lock: bool = False) -> ModelVersion:
    query = select(ModelVersion).where(ModelVersion.id == version_id, ModelVersion.user_id == user_id)
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    version = session.scalars(query).one_or_none()
    if version is None:
        raise UnknownModelVersion(f"user {user_id} has no model version {version_id}")
    return version


def promote_model_version(session: Session, *, user_id: int, version_id: int) -> ModelVersion:
    """Make this version the user's active model; the previous active one becomes "retired" (kept
    for rollback). A retired version may be promoted again (rollback); a rejected one may not.
    Per-user writes are serialised (row lock / SQLite write lock) and a partial unique index makes
    two active versions impossible even so."""
    if lock_user(session, user_id) is None:
        raise UnknownModelVersion(f"no user {user_id}")
    version = _version_of(session, user_id=user_id, version_id=version_id, lock=True)
    if version.status == ACTIVE:
        return version
    if version.status not in (CANDIDATE, RETIRED):
        raise InvalidTransition(f"model version {version_id} is {version.status}; it cannot be promoted")
    now = utcnow()
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.user_id == user_id, ModelVersion.status == ACTIVE)
        .values(status=RETIRED, retired_at=now)
        .execution_options(synchronize_session="fetch")
    )
    version.status, version.promoted_at, version.retired_at = ACTIVE, now, None
    session.flush()
    return version


def retire_active_model(session: Session, *, user_id: int) -> ModelVersion | None:
    """Go back to the base model: the active version (if any) becomes retired; returns it."""
    lock_user(session, user_id)
    active = active_model_version(session, user_id=user_id)
    if active is not None:
        active.status, active.retired_at = RETIRED, utcnow()
        session.flush()
    return active


def reject_model_version(session: Session, *, user_id: int, version_id: int, reason: str) -> ModelVersion:
    """Mark a candidate as rejected (it did not beat the current model), keeping why."""
    version = _version_of(session, user_id=user_id, version_id=version_id, lock=True)
    if version.status not in (CANDIDATE, REJECTED):
        raise InvalidTransition(f"model version {version_id} is {version.status}; only candidates are rejected")
    version.status, version.status_reason = REJECTED, reason
    session.flush()
    return version


def active_model_version(session: Session, *, user_id: int) -> ModelVersion | None:
    """The user's active personal model (weights not loaded; see :func:`load_weights`), or None."""
    return session.scalars(
        select(ModelVersion).where(ModelVersion.user_id == user_id, ModelVersion.status == ACTIVE)
    ).one_or_none()


def model_versions(session: Session, *, user_id: int) -> list[ModelVersion]:
    """All of a user's model versions, oldest first (weights not loaded)."""
    return list(session.scalars(select(ModelVersion).where(ModelVersion.user_id == user_id)
                                .order_by(ModelVersion.version)))


def load_weights(session: Session, *, user_id: int, version_id: int) -> bytes:
    """The stored weight bytes of a version, checked against their sha256 (CorruptWeights if not)."""
    version = _version_of(session, user_id=user_id, version_id=version_id)
    if version.weights_path is not None:
        return weight_store.read_file(session, relative=version.weights_path, sha256=version.weights_sha256)
    data = session.scalar(select(ModelVersion.weights).where(ModelVersion.id == version.id))
    if data is None or weight_store.sha256_hex(data) != version.weights_sha256:
        raise CorruptWeights(f"model version {version_id} weights do not match their checksum")
    return bytes(data)


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
