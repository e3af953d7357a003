"""One fine-tune job, end to end; the same code runs in the embedded worker and on Celery workers.

State machine of a job row (storage.models.FinetuneJob):

    queued --claim (CAS, attempts+1)--> running --finish (CAS on attempt)--> succeeded | failed
       ^                                   |
       +---- error with attempts left -----+  (also: the sweep, when the heartbeat went stale)

* claim: one UPDATE ... WHERE state='queued' (or running with a stale heartbeat), so two workers
  given the same job (a duplicate Celery message, a re-delivery) never train it at once; the
  attempt number is the fencing token of every later write.
* while training, a heartbeat thread refreshes `heartbeat_at`; a worker that dies stops it, and
  the sweep re-queues the job after `Settings.finetune_lease_s`.
* finish: storing the model version, promoting it (the previous active version is retired, kept
  for rollback) or recording it as rejected with the gate's reason, and closing the job happen in
  one transaction that first checks this worker still holds the job. A worker that lost its
  lease writes nothing, so the active model is never touched by a dead or late worker.
"""

from __future__ import annotations

import logging
import threading
import traceback
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from digitbot.settings import Settings
from storage import repository as repo

log = logging.getLogger(__name__)

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
    metrics: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Heartbeat:
    """Refreshes the job's lease every `interval_s` while the job runs; `lost` is set when the
    lease was taken away (the sweep thought this worker dead and another worker claimed it)."""

    def __init__(self, session_factory: Any, *, job_id: int, attempt: int, interval_s: float) -> None:
        self._factory = session_factory
        self._job_id = job_id
        self._attempt = attempt
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                with self._factory.begin() as session:
                    held = repo.heartbeat_job(session, job_id=self._job_id, attempt=self._attempt)
            except SQLAlchemyError as exc:  # the database blinked: try again at the next beat
                log.warning("job %s heartbeat failed: %s", self._job_id, exc.__class__.__name__)
                continue
            if not held:
                log.warning("job %s: lease lost, this worker will not write its result", self._job_id)
                self.lost.set()
                return


def pick_device(device: str | None = None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_job(job_id: int, *, settings: Settings, worker_id: str, session_factory: Any | None = None,
            device: str | None = None, base: Any | None = None, config: Any | None = None) -> JobOutcome:
    """Claim job `job_id`, fine-tune, gate, store and promote or reject; never raises for a bad job
    (errors are recorded on the job row, which is re-queued while attempts remain)."""
    if session_factory is None:
        from worker.scheduler import default_session_factory

        session_factory = default_session_factory(settings)
    with session_factory.begin() as session:
        claim = repo.claim_finetune_job(session, job_id=job_id, worker_id=worker_id,
                                        stale_before=_stale_before(settings))
    if claim is None:
        return JobOutcome(job_id, SKIPPED, "not claimable (already running elsewhere or finished)")
    outcome = JobOutcome(job_id, FAILED, user_id=claim.user_id, telegram_id=claim.telegram_id)
    heartbeat = Heartbeat(session_factory, job_id=job_id, attempt=claim.attempt,
                          interval_s=max(0.2, settings.finetune_lease_s / 4))
    try:
        with heartbeat:
            result, parent_id = _train(session_factory, claim, device=device, base=base, config=config)
        if heartbeat.lost.is_set():
            return JobOutcome(job_id, LOST, "lease lost while training", claim.user_id, claim.telegram_id)
        return _finish(session_factory, claim, result, parent_id, outcome)
    except Exception as exc:
        log.exception("fine-tune job %s (attempt %s) failed", job_id, claim.attempt)
        error = "".join(traceback.format_exception_only(exc)).strip()[:2000]
        try:
            with session_factory.begin() as session:
                retrying = repo.fail_finetune_job(
                    session, job_id=job_id, attempt=claim.attempt, error=error,
                    retry=claim.attempt < settings.finetune_max_attempts)
        except SQLAlchemyError:
            log.exception("could not record the failure of job %s; the sweep re-queues it", job_id)
            retrying = True
        outcome.state, outcome.reason = (RETRY if retrying else FAILED), error
        return outcome


def _stale_before(settings: Settings) -> datetime:
    from datetime import timedelta

    return datetime.now(UTC) - timedelta(seconds=settings.finetune_lease_s)


def _train(session_factory: Any, claim: Any, *, device: str | None, base: Any | None,
           config: Any | None) -> tuple[Any, int | None]:
    from core.finetune import finetune_user
    from core.model import Checkpoint, load_base

    with session_factory() as session:
        training = repo.training_set(session, user_id=claim.user_id)
        active = repo.active_model(session, user_id=claim.user_id)
    current = Checkpoint.from_bytes(active.weights) if active is not None else None
    result = finetune_user(base if base is not None else load_base(), training.images, training.labels,
                           current=current, config=config, device=pick_device(device))
    return result, (active.version_id if active is not None else None)


def _finish(session_factory: Any, claim: Any, result: Any, parent_id: int | None,
            outcome: JobOutcome) -> JobOutcome:
    metrics = dict(result.metrics)
    with session_factory.begin() as session:
        if not repo.job_still_held(session, job_id=claim.job_id, attempt=claim.attempt):
            return JobOutcome(claim.job_id, LOST, "lease lost before finishing", claim.user_id,
                              claim.telegram_id)
        version_id = repo.add_model_version(
            session, user_id=claim.user_id, weights=result.checkpoint.to_bytes(), metrics=metrics,
            parent_id=parent_id)
        if result.decision.promote:
            repo.promote_model_version(session, user_id=claim.user_id, version_id=version_id)
        else:
            repo.reject_model_version(session, user_id=claim.user_id, version_id=version_id,
                                      reason=result.decision.reason)
        state = PROMOTED if result.decision.promote else REJECTED
        repo.finish_finetune_job(session, job_id=claim.job_id, attempt=claim.attempt, outcome=state,
                                 model_version_id=version_id, metrics=metrics)
    outcome.state, outcome.reason = state, result.decision.reason
    outcome.model_version_id, outcome.metrics = version_id, metrics
    log.info("fine-tune job %s for user %s: %s (%s)", claim.job_id, claim.user_id, state,
             result.decision.reason)
    return outcome
