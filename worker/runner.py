"""Where fine-tune jobs run: the embedded local worker (default) or Celery workers (scale-out).

`start_embedded` is what `digitbot run` starts next to the bot: the APScheduler sweep plus a
dispatcher. Without `WorkerConfig.celery_broker_url` jobs run in one local worker thread of this
process; with it they are published to Celery and `digitbot worker --celery` processes run them.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from storage.db import SessionFactory
from storage.records import FinetuneRequest
from worker.config import WorkerConfig
from worker.jobs import pick_device
from worker.scheduler import FinetuneScheduler, Notify, Sweeper, request_finetune

if TYPE_CHECKING:
    from core.personal.finetune import FinetuneConfig
    from worker.lease import Progress

log = logging.getLogger(__name__)


class LocalDispatcher:
    """Runs jobs one at a time in a worker thread of this process (the embedded default), under a
    watchdog: a run past `WorkerConfig.finetune_time_limit_s`, or without a training step for
    `WorkerConfig.finetune_stall_s`, is abandoned (its jobs failed and retried while attempts remain,
    worker.jobs.abandon) and the next job starts in a fresh thread. A thread cannot be killed: the
    abandoned one is left behind (a daemon; its next training step raises, its writes are fenced)."""

    def __init__(self, config: WorkerConfig, session_factory: SessionFactory, *,
                 on_done: Callable[[], None] | None = None, worker_id: str = "local",
                 finetune: FinetuneConfig | None = None) -> None:
        self._worker = config
        self._finetune = finetune
        self._session_factory = session_factory
        self._on_done = on_done
        self._worker_id = worker_id
        self._queue: queue.SimpleQueue[list[int] | None] = queue.SimpleQueue()
        self._in_flight: set[int] = set()
        self._lock = threading.Lock()
        self._supervisor = threading.Thread(target=self._supervise, name="finetune-watchdog", daemon=True)
        self._supervisor.start()

    def __call__(self, job_ids: Sequence[int]) -> list[int]:
        with self._lock:
            fresh = [j for j in dict.fromkeys(job_ids) if j not in self._in_flight]
            self._in_flight.update(fresh)
        size = max(1, self._worker.finetune_batch_size)
        for start in range(0, len(fresh), size):
            self._queue.put(fresh[start:start + size])
        return fresh

    def _supervise(self) -> None:
        while (batch := self._queue.get()) is not None:
            try:
                self._watch(batch)
            except Exception:
                log.exception("the fine-tune watchdog failed on jobs %s", batch)
            self._finished(batch)

    def _watch(self, job_ids: list[int]) -> None:
        from worker.jobs import abandon
        from worker.lease import Progress

        progress = Progress()
        thread = threading.Thread(target=self._run, args=(job_ids, progress), name="finetune", daemon=True)
        started = time.monotonic()
        thread.start()
        limit_s, stall_s = self._worker.finetune_time_limit_s, self._worker.finetune_stall_s
        poll_s = max(0.01, min(1.0, limit_s / 20, stall_s / 20))
        while True:
            thread.join(timeout=poll_s)
            if not thread.is_alive():
                return
            if time.monotonic() - started > limit_s:
                reason = f"timed out after {limit_s:g} s"
            elif progress.idle_s() > stall_s:
                reason = f"no training progress for {stall_s:g} s"
            else:
                continue
            log.error("fine-tune jobs %s %s: abandoned, the worker moves on", job_ids, reason)
            for outcome in abandon(self._session_factory, progress, reason,
                                   max_attempts=self._worker.finetune_max_attempts):
                log.info("fine-tune job %s: %s %s", outcome.job_id, outcome.state, outcome.reason)
            return

    def _run(self, job_ids: list[int], progress: Progress) -> None:
        from worker.jobs import run_job, run_jobs

        try:
            if len(job_ids) == 1:
                outcomes = [run_job(job_ids[0], config=self._worker, worker_id=self._worker_id,
                                    session_factory=self._session_factory, finetune=self._finetune,
                                    progress=progress)]
            else:
                outcomes = run_jobs(job_ids, config=self._worker, worker_id=self._worker_id,
                                    session_factory=self._session_factory, finetune=self._finetune,
                                    progress=progress)
        except Exception:
            log.exception("fine-tune jobs %s crashed the local worker thread", job_ids)
            return
        for outcome in outcomes:
            log.info("fine-tune job %s: %s %s", outcome.job_id, outcome.state, outcome.reason or "")

    def _finished(self, job_ids: list[int]) -> None:
        with self._lock:
            self._in_flight.difference_update(job_ids)
        if self._on_done is not None:
            try:
                self._on_done()
            except Exception:
                log.exception("the fine-tune on_done callback failed")

    def idle(self) -> bool:
        with self._lock:
            return not self._in_flight

    def shutdown(self, wait: bool = True) -> None:
        """Drop the batches not started yet (they stay queued in the database) and stop; with
        `wait`, the job in progress is finished (or abandoned by the watchdog) first."""
        while True:
            try:
                batch = self._queue.get_nowait()
            except queue.Empty:
                break
            if batch is not None:
                with self._lock:
                    self._in_flight.difference_update(batch)
        self._queue.put(None)
        if wait:
            self._supervisor.join()


class CeleryDispatcher:
    """Publishes queued jobs to Celery. A job still queued `republish_after_s` after it was sent
    (default: 5 leases, at least 10 minutes) is sent again, as its message may have been lost; a
    duplicate message is harmless (the claim is a compare-and-set). A Redis broker that restarted
    (a new `run_id`: without persistence it lost every message it held) has every queued job
    published again at the next sweep instead (issue 13: before, a job whose message sat in Redis
    when it was SIGKILLed waited the 10 minutes)."""

    def __init__(self, config: WorkerConfig, *, republish_after_s: float | None = None) -> None:
        from worker.celery_app import make_celery

        self._celery = make_celery(config)
        self._broker_url = config.celery_broker_url or ""
        self._batch_size = config.finetune_batch_size
        self._republish_after_s = republish_after_s if republish_after_s is not None \
            else max(600.0, 5 * config.finetune_lease_s)
        self._published: dict[int, float] = {}
        self._broker_run_id: str | None = None

    def __call__(self, job_ids: Sequence[int]) -> list[int]:
        from worker.celery_app import publish

        now = time.monotonic()
        queued = set(job_ids)
        self._published = {j: t for j, t in self._published.items() if j in queued}
        if queued:  # before publishing: the messages sent next go to the server with this run id
            self._forget_if_broker_restarted()
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

    def forget(self, job_ids: Sequence[int]) -> None:
        """These jobs were queued again after a run (the sweep tells): publish them at once."""
        for job_id in job_ids:
            self._published.pop(job_id, None)

    def _forget_if_broker_restarted(self) -> None:
        run_id = broker_run_id(self._broker_url)
        if run_id is None:  # not Redis, or unreachable now: publishing will tell
            return
        if self._broker_run_id is not None and run_id != self._broker_run_id and self._published:
            log.warning("Celery broker %s restarted: publishing the %d queued fine-tune job(s) sent "
                        "before again (their messages may be lost)", _redact(self._broker_url),
                        len(self._published))
            self._published.clear()
        self._broker_run_id = run_id

    def shutdown(self, wait: bool = True) -> None:
        self._celery.close()


def broker_run_id(broker_url: str) -> str | None:
    """The Redis server's `run_id` (a new one at every start), or None: not a Redis URL, or unreachable."""
    if urlsplit(broker_url).scheme not in ("redis", "rediss"):
        return None
    import redis

    try:
        client = redis.Redis.from_url(broker_url, socket_connect_timeout=3, socket_timeout=3)
        try:
            return str(client.info("server")["run_id"])
        finally:
            client.close()
    except (redis.RedisError, OSError, KeyError):
        return None


@dataclass
class WorkerHandle:
    """What `start_embedded` returns: stop it on shutdown; `request_finetune` serves /train."""

    config: WorkerConfig
    sweeper: Sweeper
    scheduler: FinetuneScheduler
    dispatcher: LocalDispatcher | CeleryDispatcher
    session_factory: SessionFactory

    def start(self) -> WorkerHandle:
        self.scheduler.start()
        return self

    def request_finetune(self, telegram_id: int) -> FinetuneRequest:
        request = request_finetune(telegram_id, min_labels=self.config.finetune_min_labels,
                                   session_factory=self.session_factory)
        if request.accepted:
            self.scheduler.wake()
        return request

    def stop(self, wait: bool = True) -> None:
        self.scheduler.stop()
        self.dispatcher.shutdown(wait=wait)


def embedded_worker(config: WorkerConfig, *, session_factory: SessionFactory, notify: Notify | None = None,
                   first_sweep_delay_s: float = 1.0, use_celery: bool | None = None,
                   finetune: FinetuneConfig | None = None) -> WorkerHandle:
    """The fine-tune sweep and its dispatcher for this process, not started yet (`handle.start()`).

    Jobs go to Celery when `use_celery` (default: when `config.celery_broker_url` is set), else
    they run in a local worker thread (`finetune`: fine-tune settings for those, default
    core.personal.finetune's). `notify(telegram_id, summary)` is called after promotions."""
    factory = session_factory
    scheduler_ref: list[FinetuneScheduler] = []

    def after_job() -> None:  # deliver the promotion message and pick up the next job now
        if scheduler_ref:
            scheduler_ref[0].wake()

    dispatcher: LocalDispatcher | CeleryDispatcher
    if config.celery_broker_url if use_celery is None else use_celery:
        dispatcher = CeleryDispatcher(config)
        log.info("fine-tune jobs go to Celery at %s", _redact(config.celery_broker_url or ""))
    else:
        dispatcher = LocalDispatcher(config, factory, on_done=after_job, finetune=finetune)
        log.info("fine-tune jobs run in the embedded local worker")
    sweeper = Sweeper(config, session_factory=factory, dispatch=dispatcher, notify=notify)
    scheduler = FinetuneScheduler(sweeper, interval_s=config.finetune_interval_s,
                                  first_run_delay_s=first_sweep_delay_s)
    scheduler_ref.append(scheduler)
    return WorkerHandle(config=config, sweeper=sweeper, scheduler=scheduler, dispatcher=dispatcher,
                        session_factory=factory)


def start_embedded(config: WorkerConfig, *, session_factory: SessionFactory, notify: Notify | None = None,
                   first_sweep_delay_s: float = 1.0, use_celery: bool | None = None,
                   finetune: FinetuneConfig | None = None) -> WorkerHandle:
    """Start the fine-tune sweep and its dispatcher in this process; returns a handle to stop them."""
    return embedded_worker(config, session_factory=session_factory, notify=notify,
                           first_sweep_delay_s=first_sweep_delay_s, use_celery=use_celery, finetune=finetune).start()


def run_local_worker(config: WorkerConfig, *, session_factory: SessionFactory, notify: Notify | None = None) -> None:
    """`digitbot worker`: sweep and run jobs in the foreground until SIGINT/SIGTERM; a job in
    progress is finished first (a hard kill is covered by the lease: the job is re-queued)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    handle = start_embedded(config, session_factory=session_factory, notify=notify, first_sweep_delay_s=0.0,
                            use_celery=False)
    log.info("fine-tune worker running on %s, a sweep every %.0f s", pick_device(),
             config.finetune_interval_s)
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
