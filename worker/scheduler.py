"""The fine-tune sweep: an APScheduler job that turns "enough new labels" into fine-tune jobs.

Every `WorkerConfig.finetune_interval_s` one sweep (max_instances=1, coalesce=True, so sweeps never
overlap or pile up):
1. re-queues running jobs whose heartbeat is older than `WorkerConfig.finetune_lease_s` (their
   worker died) or fails them after `WorkerConfig.finetune_max_attempts` runs;
2. creates a job for every user with >= `WorkerConfig.finetune_min_labels` labels since their last
   run (the database allows one open job per user, so concurrent sweeps cannot double it);
3. hands every queued job to the dispatcher (the local worker, or Celery; when Redis is down the
   jobs simply stay queued and the next sweep tries again);
4. delivers promotion notifications not yet sent (an outbox on the job row), so a job that ran
   on a Celery worker elsewhere still reaches the user;
5. at start-up and then every `ORPHAN_SWEEP_EVERY_S`, deletes weight files that no model row
   refers to and that are older than `ORPHAN_GRACE_S` (left by a process killed between writing a
   file and committing its row; `storage.repository.sweep_orphan_weights`).
Every sweep is safe to run concurrently from several processes (bot replicas).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.exc import SQLAlchemyError

from storage import repository as repo
from storage.db import SessionFactory
from storage.records import FinetuneRequest
from storage.repository import jobs as job_repo
from worker.config import WorkerConfig
from worker.notices import summary_of

log = logging.getLogger(__name__)

Notify = Callable[[int, dict[str, Any]], Any]
Dispatch = Callable[[Sequence[int]], list[int]]
SWEEP_JOB_ID = "finetune-sweep"
CREATE_CHUNK = 100  # jobs created per transaction (short row locks, few commits)
NOTIFY_WITHIN_S = 24 * 3600  # an older unannounced promotion is not news any more
ORPHAN_GRACE_S = 3600.0  # a weights file this old with no row is an orphan (no commit takes an hour)
ORPHAN_SWEEP_EVERY_S = 600.0


@dataclass
class SweepReport:
    requeued: int = 0  # running jobs whose lease expired: queued again, or failed when out of attempts
    created: list[int] = field(default_factory=list)
    dispatched: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)  # queued but not handed over this time
    notified: list[int] = field(default_factory=list)
    orphans_removed: list[str] = field(default_factory=list)  # weight files no model row referred to


class Sweeper:
    def __init__(self, config: WorkerConfig, *, session_factory: SessionFactory, dispatch: Dispatch,
                 notify: Notify | None = None, orphan_grace_s: float = ORPHAN_GRACE_S) -> None:
        self.config = config
        self.session_factory = session_factory
        self.dispatch = dispatch
        self.notify = notify
        self.orphan_grace_s = orphan_grace_s
        self._lock = threading.Lock()
        self._orphans_swept_at: float | None = None  # time.monotonic() of the last orphan sweep
        self._queued_attempts: dict[int, int] = {}  # queued jobs at the last sweep -> their attempts

    def sweep(self) -> SweepReport:
        with self._lock:  # a wake-up sweep waits for the scheduled one instead of overlapping it
            return self._sweep()

    def _sweep(self) -> SweepReport:
        report = SweepReport()
        stale_before = datetime.now(UTC) - timedelta(seconds=self.config.finetune_lease_s)
        with self.session_factory.begin() as session:
            report.requeued = repo.requeue_stale_jobs(
                session, started_before=stale_before, max_attempts=self.config.finetune_max_attempts)
        if report.requeued:
            log.warning("fine-tune sweep: %d job(s) whose worker stopped renewing its lease were "
                        "re-queued (or failed after %d attempts)", report.requeued,
                        self.config.finetune_max_attempts)

        with self.session_factory() as session:
            due = repo.users_due_for_finetune(session, min_labels=self.config.finetune_min_labels)
        for start in range(0, len(due), CREATE_CHUNK):
            with self.session_factory.begin() as session:
                for user_id in due[start:start + CREATE_CHUNK]:
                    job = repo.create_finetune_job(session, user_id=user_id)
                    if job is not None:  # None: another sweep or /train got there first
                        report.created.append(job.id)

        with self.session_factory() as session:
            attempts = job_repo.queued_jobs(session)
        queued = list(attempts)
        # Jobs queued again since the last sweep (a worker died or failed: more attempts, or not
        # queued last time): the dispatcher must not count them as sent (issue 13: the Celery
        # dispatcher published such a job again only after `republish_after_s`, 10 minutes).
        requeued = [j for j, n in attempts.items() if n > 0 and self._queued_attempts.get(j) != n]
        self._queued_attempts = attempts
        forget = getattr(self.dispatch, "forget", None)
        if requeued and forget is not None:
            forget(requeued)
        if queued:
            report.dispatched = list(self.dispatch(queued))
            handed = set(report.dispatched)
            report.waiting = [j for j in queued if j not in handed]
        report.notified = self.deliver_notifications()
        report.orphans_removed = self.remove_orphan_weights()
        if report.created or report.requeued or report.dispatched or report.notified:
            log.info("fine-tune sweep: %d created, %d re-queued, %d dispatched, %d waiting, %d notified",
                     len(report.created), report.requeued, len(report.dispatched), len(report.waiting),
                     len(report.notified))
        return report

    def safe_sweep(self) -> SweepReport | None:
        """The scheduled entry point: a sweep that fails (database down) is logged, never raised."""
        try:
            return self.sweep()
        except SQLAlchemyError as exc:
            log.warning("fine-tune sweep skipped, the database is unavailable (the next sweep retries): %s",
                        exc.__class__.__name__)
        except Exception:
            log.exception("fine-tune sweep failed; the next sweep retries")
        return None

    def remove_orphan_weights(self, *, force: bool = False) -> list[str]:
        """Housekeeping, at the first sweep and then every ORPHAN_SWEEP_EVERY_S (or when forced):
        weight files with no model row, older than the grace period. Never fails the sweep."""
        now = time.monotonic()
        if not force and self._orphans_swept_at is not None and now - self._orphans_swept_at < ORPHAN_SWEEP_EVERY_S:
            return []
        self._orphans_swept_at = now
        try:
            with self.session_factory() as session:
                removed = repo.sweep_orphan_weights(session, grace_s=self.orphan_grace_s)
        except Exception:
            log.exception("removing orphaned weight files failed; the next orphan sweep retries")
            return []
        if removed:
            log.warning("removed %d weight file(s) that no model row referred to (a process stopped "
                        "between writing and committing): %s", len(removed), ", ".join(removed[:10]))
        return removed

    def deliver_notifications(self) -> list[int]:
        """Tell users about promotions not announced yet (each once, whichever process ran the job)."""
        if self.notify is None:
            return []
        since = datetime.now(UTC) - timedelta(seconds=NOTIFY_WITHIN_S)
        with self.session_factory() as session:
            pending = job_repo.pending_notices(session, since=since)
        delivered = []
        for notice in pending:
            with self.session_factory.begin() as session:
                if not job_repo.mark_notified(session, job_id=notice.job_id):
                    continue  # another process announced this one
            try:
                self.notify(notice.telegram_id, summary_of(notice.metrics, promoted=notice.promoted))
                delivered.append(notice.job_id)
            except Exception:
                log.exception("telling the user of fine-tune job %s about the new model failed; the next "
                              "sweep tries again", notice.job_id)
                with self.session_factory.begin() as session:
                    job_repo.unmark_notified(session, job_id=notice.job_id)
        return delivered


def request_finetune(telegram_id: int, *, min_labels: int, session_factory: SessionFactory) -> FinetuneRequest:
    """The bot's /train: queue a fine-tune now if the user has a few new labels, else say why not
    (``min_labels``: what the sweep waits for)."""
    with session_factory.begin() as session:
        return job_repo.request_job(session, telegram_id=telegram_id, min_labels=min_labels)


class FinetuneScheduler:
    """APScheduler's BackgroundScheduler running `Sweeper.safe_sweep` every `interval_s`."""

    def __init__(self, sweeper: Sweeper, *, interval_s: float, first_run_delay_s: float = 1.0) -> None:
        self.sweeper = sweeper
        self.interval_s = interval_s
        self.first_run_delay_s = first_run_delay_s
        self._scheduler = BackgroundScheduler(timezone=UTC)
        self._wake_lock = threading.Lock()

    def start(self) -> None:
        self._scheduler.add_job(
            self.sweeper.safe_sweep, "interval", seconds=self.interval_s, id=SWEEP_JOB_ID,
            max_instances=1, coalesce=True, misfire_grace_time=None,
            next_run_time=datetime.now(UTC) + timedelta(seconds=self.first_run_delay_s))
        self._scheduler.start()

    def wake(self) -> None:
        """Run a sweep as soon as possible (after /train or a finished job)."""
        with self._wake_lock:
            if self._scheduler.running:
                self._scheduler.add_job(self.sweeper.safe_sweep, id=f"{SWEEP_JOB_ID}-now",
                                        replace_existing=True, max_instances=1, coalesce=True,
                                        misfire_grace_time=None)

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
