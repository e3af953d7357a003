"""One fine-tune job, end to end; the same code runs in the embedded worker and on Celery workers.

State machine of a job row (storage.models.FinetuneJob):

    queued --claim (CAS, attempts+1)--> running --finish (CAS on attempt)--> succeeded | failed
       ^                                   |
       +---- error with attempts left -----+  (also: the sweep, when the heartbeat went stale)

* claim: a row-locked queued -> running transition (storage.repository.claim_job), so two workers
  given the same job (a duplicate Celery message, a re-delivery) never train it at once; the
  attempt number is the fencing token of every later write (storage/repository/jobs.py).
* while training, a heartbeat thread renews the lease; a worker that dies stops renewing it, and
  the sweep re-queues the job after `WorkerConfig.finetune_lease_s`. The heartbeat renews only while
  training progresses (`Progress`: every optimiser step ticks it); after `WorkerConfig.finetune_stall_s`
  without a step it stops renewing and abandons the job (a hung worker is treated as a dead one).
* time limits: Celery's soft/hard limits (worker/celery_app.py) and the embedded worker's
  watchdog (worker/runner.py) abandon a job running past `WorkerConfig.finetune_time_limit_s`: it is
  failed (retried while attempts remain) and the worker moves on; if the abandoned training ever
  resumes, its next step raises `JobAbandoned`, and its fenced writes are refused anyway.
* finish: storing the model version, promoting it (the previous active version is retired, kept
  for rollback) or recording it as rejected with the gate's reason, and closing the job happen in
  one transaction that first checks this worker still holds the job. A worker that lost its
  lease writes nothing, so the active model is never touched by a dead or late worker.
"""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from core.model.network import Checkpoint, load_base
from core.personal.batched_finetune import UserSamples
from core.personal.finetune import FinetuneConfig, FinetuneResult
from storage import repository as repo
from storage.db import SessionFactory
from storage.models import QUEUED
from storage.records import Claim
from storage.repository import jobs as job_repo
from worker.config import WorkerConfig
from worker.lease import Heartbeat, JobAbandoned, Progress

log = logging.getLogger(__name__)

Trainer = Callable[..., FinetuneResult]  # core.personal.finetune.finetune_user's signature
BatchTrainer = Callable[..., list[FinetuneResult]]  # core.personal.batched_finetune.finetune_users's signature
PROMOTED, REJECTED, SKIPPED, FAILED, RETRY, LOST = (
    "promoted", "rejected", "skipped", "failed", "retry", "lost")


@dataclass
class JobOutcome:
    job_id: int
    state: str  # PROMOTED | REJECTED | SKIPPED | FAILED | RETRY | LOST
    reason: str = ""
    user_id: int | None = None
    telegram_id: int | None = None
    model_version_id: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # FinetuneMetrics.to_dict() (with version, reason)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.lru_cache(maxsize=2)
def cached_base(path: str) -> Checkpoint:
    """The base checkpoint (WorkerConfig.base_weights), loaded once per process."""
    return load_base(path)


def pick_device(device: str | None = None) -> str:
    """core.model.network.pick_device as the name the worker logs and passes around."""
    from core.model.network import pick_device as choose

    return str(choose(device or None))


def run_job(job_id: int, *, config: WorkerConfig, worker_id: str, session_factory: SessionFactory,
            device: str | None = None, base: Checkpoint | None = None,
            finetune: FinetuneConfig | None = None, trainer: Trainer | None = None,
            progress: Progress | None = None) -> JobOutcome:
    """Claim job `job_id`, fine-tune, gate, store and promote or reject; never raises for a bad job
    (errors are recorded on the job row, which is re-queued while attempts remain).

    `trainer` defaults to core.personal.finetune.finetune_user (same signature)."""
    def train_one(base: Checkpoint, users: Sequence[UserSamples], **kwargs: Any) -> list[FinetuneResult]:
        from core.personal.finetune import finetune_user

        (user,) = users
        return [(trainer or finetune_user)(base, user.images, user.labels, current=user.current, **kwargs)]

    return run_jobs([job_id], config=config, worker_id=worker_id, session_factory=session_factory,
                    device=device, base=base, finetune=finetune, batch_trainer=train_one, progress=progress)[0]


def run_jobs(job_ids: Sequence[int], *, config: WorkerConfig, worker_id: str, session_factory: SessionFactory,
             device: str | None = None, base: Checkpoint | None = None, finetune: FinetuneConfig | None = None,
             batch_trainer: BatchTrainer | None = None, progress: Progress | None = None) -> list[JobOutcome]:
    """Several jobs trained together (core.personal.batched_finetune: the trunk runs once, the users' heads
    train side by side); each job is still claimed, fenced, finished or failed on its own.
    One outcome per job id, in order. `progress`: the watchdog's handle on this run (its claims
    are set once claimed; see `abandon`)."""
    outcomes: dict[int, JobOutcome] = {}
    claims = []
    for job_id in dict.fromkeys(job_ids):
        claim = _claim(session_factory, job_id)
        if claim is None:
            outcomes[job_id] = JobOutcome(job_id, SKIPPED, "not claimable (running elsewhere, or finished)")
        else:
            claims.append(claim)
            log.info("fine-tune job %s (user %s, attempt %s) claimed by %s", job_id, claim.user_id,
                     claim.attempt, worker_id)
    progress = progress or Progress()
    progress.claims = list(claims)
    if claims:
        heartbeat = Heartbeat(session_factory, claims, interval_s=max(0.1, config.finetune_lease_s / 4),
                              progress=progress, stall_s=config.finetune_stall_s)
        try:
            with heartbeat, progress.bound():
                progress.tick()
                inputs = [_load(session_factory, claim) for claim in claims]
                progress.tick()
                results = _batch_trainer(batch_trainer)(
                    base or cached_base(str(config.base_weights)), [user for user, _ in inputs],
                    config=finetune, device=pick_device(device))
                progress.tick()
        except Exception as exc:
            log.exception("fine-tune jobs %s failed", [c.job_id for c in claims])
            for claim in claims:
                outcomes[claim.job_id] = _record_failure(session_factory, claim, _error_text(exc),
                                                         config.finetune_max_attempts)
        else:
            for claim, (_, parent_id), result in zip(claims, inputs, results, strict=True):
                outcomes[claim.job_id] = _conclude(session_factory, claim, result, parent_id,
                                                   lost=claim.job_id in heartbeat.lost,
                                                   max_attempts=config.finetune_max_attempts)
    return [outcomes[job_id] for job_id in job_ids]


def abandon(session_factory: SessionFactory, progress: Progress, reason: str, *, max_attempts: int) -> list[JobOutcome]:
    """Give up on a run that exceeded its time limit or stalled (the embedded worker's watchdog):
    its claimed jobs are failed with `reason` and re-queued while attempts remain, as for any
    error. Fenced by the attempt, so a job the run already finished (or lost) is left alone."""
    progress.abandon(reason)
    return [_record_failure(session_factory, claim, f"{JobAbandoned.__name__}: {reason}", max_attempts)
            for claim in progress.claims]


def _batch_trainer(batch_trainer: BatchTrainer | None) -> BatchTrainer:
    if batch_trainer is not None:
        return batch_trainer
    from core.personal.batched_finetune import finetune_users

    return finetune_users


def _error_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(exc)).strip()[:2000]


def _conclude(session_factory: SessionFactory, claim: Claim, result: FinetuneResult, parent_id: int | None, *,
              lost: bool, max_attempts: int) -> JobOutcome:
    if lost:
        return JobOutcome(claim.job_id, LOST, "lease lost while training", claim.user_id, claim.telegram_id)
    try:
        return _finish(session_factory, claim, result, parent_id)
    except Exception as exc:
        log.exception("storing the result of fine-tune job %s failed", claim.job_id)
        return _record_failure(session_factory, claim, _error_text(exc), max_attempts)


def _claim(session_factory: SessionFactory, job_id: int) -> Claim | None:
    with session_factory.begin() as session:
        return job_repo.claim(session, job_id=job_id)


def _load(session_factory: SessionFactory, claim: Claim) -> tuple[UserSamples, int | None]:
    """The user's labelled samples and current model (and that model's version id, the parent)."""
    with session_factory() as session:
        training = repo.training_set(session, user_id=claim.user_id)
        active = repo.active_model_version(session, user_id=claim.user_id)
        current_bytes = (repo.load_weights(session, user_id=claim.user_id, version_id=active.id)
                         if active is not None else None)
        parent_id = active.id if active is not None else None
    current = Checkpoint.from_bytes(current_bytes) if current_bytes is not None else None
    return UserSamples(training.images, training.labels, current), parent_id


def _finish(session_factory: SessionFactory, claim: Claim, result: FinetuneResult,
            parent_id: int | None) -> JobOutcome:
    promote = bool(result.decision.promote)
    with session_factory.begin() as session:
        if not job_repo.holds(session, job_id=claim.job_id, attempt=claim.attempt):
            return JobOutcome(claim.job_id, LOST, "lease lost before finishing", claim.user_id,
                              claim.telegram_id)
        version = repo.add_model_version(session, user_id=claim.user_id, parent_id=parent_id,
                                         weights=result.checkpoint.to_bytes(), metrics=result.metrics.to_dict())
        if promote:
            repo.promote_model_version(session, user_id=claim.user_id, version_id=version.id)
        else:
            repo.reject_model_version(session, user_id=claim.user_id, version_id=version.id,
                                      reason=result.decision.reason)
        metrics = replace(result.metrics, version=version.version, reason=result.decision.reason).to_dict()
        state = PROMOTED if promote else REJECTED
        repo.finish_job(session, job_id=claim.job_id, metrics=metrics, outcome=state,
                        model_version_id=version.id)
        version_id = version.id
    log.info("fine-tune job %s for user %s: %s version %s (%s)", claim.job_id, claim.user_id, state,
             metrics["version"], result.decision.reason)
    return JobOutcome(claim.job_id, state, result.decision.reason, claim.user_id, claim.telegram_id,
                      version_id, metrics)


def _record_failure(session_factory: SessionFactory, claim: Claim, error: str, max_attempts: int) -> JobOutcome:
    outcome = JobOutcome(claim.job_id, FAILED, error, claim.user_id, claim.telegram_id)
    try:
        with session_factory.begin() as session:
            if not job_repo.holds(session, job_id=claim.job_id, attempt=claim.attempt):
                outcome.state = LOST
                return outcome
            job = repo.fail_job(session, job_id=claim.job_id, error=error, retry=True,
                                max_attempts=max_attempts)
            outcome.state = RETRY if job.state == QUEUED else FAILED
    except SQLAlchemyError:
        # The database is unreachable: the job stays "running" and its lease expires, so the
        # sweep re-queues it once the database is back.
        log.exception("could not record the failure of job %s; the sweep will re-queue it", claim.job_id)
        outcome.state = RETRY
    return outcome
