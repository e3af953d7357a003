"""Where fine-tune jobs run: the embedded local worker (default) or Celery workers (scale-out).

`start_embedded` is what `digitbot run` starts next to the bot: the APScheduler sweep plus a
dispatcher. Without `Settings.celery_broker_url` jobs run in one local worker thread of this
process; with it they are published to Celery and `digitbot worker --celery` processes run them.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from digitbot.settings import Settings
from worker.jobs import pick_device
from worker.scheduler import (
    FinetuneRequest,
    FinetuneScheduler,
    Notify,
    SessionFactory,
    Sweeper,
    default_session_factory,
    request_finetune,
)

if TYPE_CHECKING:
    from core.finetune import FinetuneConfig

log = logging.getLogger(__name__)


class LocalDispatcher:
    """Runs jobs one at a time in a worker thread of this process (the embedded default)."""

    def __init__(self, settings: Settings, session_factory: SessionFactory, *,
                 on_done: Callable[[], None] | None = None, worker_id: str = "local",
                 config: FinetuneConfig | None = None) -> None:
        self._settings = settings
        self._config = config
        self._session_factory = session_factory
        self._on_done = on_done
        self._worker_id = worker_id
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finetune")
        self._in_flight: set[int] = set()
        self._lock = threading.Lock()

    def __call__(self, job_ids: Sequence[int]) -> list[int]:
        with self._lock:
            fresh = [j for j in dict.fromkeys(job_ids) if j not in self._in_flight]
            self._in_flight.update(fresh)
        size = max(1, self._settings.finetune_batch_size)
        for start in range(0, len(fresh), size):
            batch = fresh[start:start + size]
            future = self._executor.submit(self._run, batch)
            # Outside the lock: a future that is already done runs its callback right here.
            future.add_done_callback(functools.partial(self._finished, batch))
        return fresh

    def _run(self, job_ids: list[int]) -> None:
        from worker.jobs import run_job, run_jobs

        if len(job_ids) == 1:
            outcomes = [run_job(job_ids[0], settings=self._settings, worker_id=self._worker_id,
                                session_factory=self._session_factory, config=self._config)]
        else:
            outcomes = run_jobs(job_ids, settings=self._settings, worker_id=self._worker_id,
                                session_factory=self._session_factory, config=self._config)
        for outcome in outcomes:
            log.info("fine-tune job %s: %s %s", outcome.job_id, outcome.state, outcome.reason or "")

    def _finished(self, job_ids: list[int], future: Future[None]) -> None:
        with self._lock:
            self._in_flight.difference_update(job_ids)
        if not future.cancelled() and future.exception() is not None:
            log.error("fine-tune jobs %s crashed the local worker thread", job_ids, exc_info=future.exception())
        if self._on_done is not None:
            self._on_done()

    def idle(self) -> bool:
        with self._lock:
            return not self._in_flight

    def shutdown(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=True)


class CeleryDispatcher:
    """Publishes queued jobs to Celery. A job still queued `republish_after_s` after it was sent
    (default: 5 leases, at least 10 minutes) is sent again, as its message may have been lost with
    a Redis restart; a duplicate message is harmless (the claim is a compare-and-set)."""

    def __init__(self, settings: Settings, *, republish_after_s: float | None = None) -> None:
        from worker.celery_app import make_celery

        self._celery = make_celery(settings)
        self._broker_url = settings.celery_broker_url or ""
        self._batch_size = settings.finetune_batch_size
        self._republish_after_s = republish_after_s if republish_after_s is not None \
            else max(600.0, 5 * settings.finetune_lease_s)
        self._published: dict[int, float] = {}

    def __call__(self, job_ids: Sequence[int]) -> list[int]:
        from worker.celery_app import publish

        now = time.monotonic()
        queued = set(job_ids)
        self._published = {j: t for j, t in self._published.items() if j in queued}
        due = [j for j in dict.fromkeys(job_ids)
               if now - self._published.get(j, -float("inf")) >= self._republish_after_s]
        size = max(1, self._batch_size)
        sent: list[int] = []
        for start in range(0, len(due), size):
            batch = due[start:start + size]
            if not publish(batch, celery=self._celery):
                log.warning("Celery broker %s unreachable: %d fine-tune job(s) stay queued in the "
                            "database; the next sweep publishes them again",
                            _redact(self._broker_url), len(due) - len(sent))
                break
            self._published.update(dict.fromkeys(batch, now))
            sent.extend(batch)
        return sent

    def shutdown(self, wait: bool = True) -> None:
        self._celery.close()


@dataclass
class WorkerHandle:
    """What `start_embedded` returns: stop it on shutdown; `request_finetune` serves /train."""

    settings: Settings
    sweeper: Sweeper
    scheduler: FinetuneScheduler
    dispatcher: LocalDispatcher | CeleryDispatcher
    session_factory: SessionFactory

    def request_finetune(self, telegram_id: int) -> FinetuneRequest:
        request = request_finetune(telegram_id, settings=self.settings, session_factory=self.session_factory)
        if request.accepted:
            self.scheduler.wake()
        return request

    def sweep_now(self) -> None:
        self.scheduler.wake()

    def stop(self, wait: bool = True) -> None:
        self.scheduler.stop()
        self.dispatcher.shutdown(wait=wait)


def start_embedded(settings: Settings, *, notify: Notify | None = None,
                   session_factory: SessionFactory | None = None, first_sweep_delay_s: float = 1.0,
                   use_celery: bool | None = None, config: FinetuneConfig | None = None) -> WorkerHandle:
    """Start the fine-tune sweep and its dispatcher in this process; returns a handle to stop them.

    Jobs go to Celery when `use_celery` (default: when `settings.celery_broker_url` is set), else
    they run in a local worker thread (`config`: fine-tune settings for those, default
    core.finetune's). `notify(telegram_id, summary)` is called after promotions."""
    factory = session_factory or default_session_factory(settings)
    scheduler_ref: list[FinetuneScheduler] = []

    def after_job() -> None:  # deliver the promotion message and pick up the next job now
        if scheduler_ref:
            scheduler_ref[0].wake()

    dispatcher: LocalDispatcher | CeleryDispatcher
    if settings.celery_broker_url if use_celery is None else use_celery:
        dispatcher = CeleryDispatcher(settings)
        log.info("fine-tune jobs go to Celery at %s", _redact(settings.celery_broker_url or ""))
    else:
        dispatcher = LocalDispatcher(settings, factory, on_done=after_job, config=config)
        log.info("fine-tune jobs run in the embedded local worker")
    sweeper = Sweeper(settings, session_factory=factory, dispatch=dispatcher, notify=notify)
    scheduler = FinetuneScheduler(sweeper, interval_s=settings.finetune_interval_s,
                                  first_run_delay_s=first_sweep_delay_s)
    scheduler_ref.append(scheduler)
    scheduler.start()
    return WorkerHandle(settings=settings, sweeper=sweeper, scheduler=scheduler, dispatcher=dispatcher,
                        session_factory=factory)


def run_local_worker(settings: Settings, *, notify: Notify | None = None) -> None:
    """`digitbot worker`: sweep and run jobs in the foreground until SIGINT/SIGTERM; a job in
    progress is finished first (a hard kill is covered by the lease: the job is re-queued)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    handle = start_embedded(settings, notify=notify, first_sweep_delay_s=0.0, use_celery=False)
    log.info("fine-tune worker running on %s, a sweep every %.0f s", pick_device(),
             settings.finetune_interval_s)
    try:
        stop.wait()
        log.info("stopping the fine-tune worker (finishing the job in progress)")
    finally:
        handle.stop()


def _redact(url: str) -> str:
    """The broker URL without its password (for logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
