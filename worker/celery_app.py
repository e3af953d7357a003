"""Scale-out: fine-tune jobs carried by Celery (Redis broker) to `digitbot worker --celery` processes.

The database job row stays the source of truth: a Celery message only says "job N may be run
now". Delivery guarantees come from Celery (acks late, re-delivery when a worker process dies,
Redis visibility timeout when a whole worker machine disappears) and from the job row (claimed
with a compare-and-set, heartbeat lease re-queued by the sweep), so a job is never lost and a
duplicate message never trains a user's model twice at once.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError as DatabaseUnavailable

from worker.config import WorkerConfig

log = logging.getLogger(__name__)

TASK_NAME = "digitbot.finetune"
BATCH_TASK_NAME = "digitbot.finetune_batch"
QUEUE = "finetune"
HARD_LIMIT_GRACE_S = 60.0  # after the soft time limit, before the pool process is killed
# Errors meaning "the broker is unreachable": the job stays queued in the database.
BROKER_ERRORS: tuple[type[BaseException], ...] = (KombuOperationalError, RedisError, ConnectionError, OSError)


def celery_config(config: WorkerConfig) -> dict[str, Any]:
    # The visibility timeout must exceed the longest fine-tune, or Redis hands the unacked
    # message to a second worker while the first is still training (the DB claim would then
    # make the second one skip, but it would waste a worker slot).
    visibility_timeout = max(3600, int(config.finetune_lease_s * 10), int(config.finetune_time_limit_s * 2))
    return {
        "broker_url": config.celery_broker_url,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_retry_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # A hung fine-tune: the soft limit raises SoftTimeLimitExceeded in the task (the job is
        # failed and retried while attempts remain); the hard limit then kills the pool process
        # (its lease expires and the sweep re-queues the job). Prefork pool only.
        **time_limits(config),
        "task_ignore_result": True,
        "task_default_queue": QUEUE,
        "task_serializer": "json",
        "accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 3,
        "broker_transport_options": {
            "visibility_timeout": visibility_timeout,
            "socket_connect_timeout": 3,
            "socket_timeout": 10,
            # Publishing never blocks a sweep for long when Redis is down.
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
    }


def time_limits(config: WorkerConfig) -> dict[str, float]:
    soft = config.finetune_time_limit_s
    return {"task_soft_time_limit": soft, "task_time_limit": soft + HARD_LIMIT_GRACE_S}


def make_celery(config: WorkerConfig) -> Celery:
    celery = Celery("digitbot")
    celery.conf.update(celery_config(config))
    return celery


# The tasks' app: configured by run_celery_worker before the worker starts (and forks its pool).
app = Celery("digitbot")
_config: WorkerConfig | None = None


def worker_identity() -> str:
    return f"celery:{socket.gethostname()}:{os.getpid()}"


TASK_OPTIONS: dict[str, Any] = {
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "retry_on_worker_lost": True,
    "autoretry_for": (DatabaseUnavailable,),
    "retry_backoff": 5,
    "retry_backoff_max": 300,
    "retry_jitter": True,
    "max_retries": 8,
}


@app.task(name=TASK_NAME, **TASK_OPTIONS)
def finetune_task(self: Any, job_id: int) -> dict[str, Any]:
    """Run fine-tune job `job_id` (a no-op when another worker holds it or it already ended)."""
    from worker.jobs import run_job

    config = _worker_config()
    outcome = run_job(job_id, config=config, worker_id=worker_identity(), session_factory=_session_factory(config))
    log.info("job %s: %s", job_id, outcome.state)
    return outcome.as_dict()


@app.task(name=BATCH_TASK_NAME, **TASK_OPTIONS)
def finetune_batch_task(self: Any, job_ids: list[int]) -> list[dict[str, Any]]:
    """Run several fine-tune jobs together (core.personal.batched_finetune; the GPU path)."""
    from worker.jobs import run_jobs

    config = _worker_config()
    outcomes = run_jobs(job_ids, config=config, worker_id=worker_identity(), session_factory=_session_factory(config))
    log.info("jobs %s: %s", job_ids, [o.state for o in outcomes])
    return [o.as_dict() for o in outcomes]


_factories: dict[str, Any] = {}


def _worker_config() -> WorkerConfig:
    """The worker's configuration: run_celery_worker's (inherited by the pool processes), else, in a
    process started by Celery's own command line, the settings' (this module is then the entry point)."""
    global _config
    if _config is None:
        from digitbot.settings import get_settings
        from digitbot.wiring import use_data_paths, worker_config

        use_data_paths()
        _config = worker_config(get_settings())
    return _config


def _session_factory(config: WorkerConfig) -> Any:
    """One engine per worker process and database (created after the prefork fork, on first use)."""
    from storage.db import init_db

    url = config.database_url
    if url not in _factories:
        _factories[url] = init_db(url, weights_dir=config.weights_dir,
                                  max_samples_per_user=config.max_samples_per_user)
    return _factories[url]


def publish(job_ids: Sequence[int], *, celery: Celery) -> bool:
    """Send jobs to the Celery queue (several ids: one task that trains them together); False
    when the broker is unreachable (the caller leaves them queued in the database and tries again
    at the next sweep)."""
    name, args = (TASK_NAME, [job_ids[0]]) if len(job_ids) == 1 else (BATCH_TASK_NAME, [list(job_ids)])
    try:
        celery.send_task(name, args=args, queue=QUEUE,
                         retry=True, retry_policy={"max_retries": 1, "interval_start": 0,
                                                   "interval_step": 0.5, "interval_max": 1})
    except BROKER_ERRORS as exc:
        log.debug("publishing fine-tune jobs %s failed: %r", list(job_ids), exc)
        return False
    return True


def run_celery_worker(config: WorkerConfig, *, concurrency: int = 1, loglevel: str = "INFO") -> None:
    """The `digitbot worker --celery` process: consumes fine-tune tasks until stopped."""
    global _config
    _config = config
    celery = app
    celery.conf.update(celery_config(config))
    celery.worker_main([
        "worker", f"--loglevel={loglevel}", f"--concurrency={concurrency}", "--pool=prefork",
        "-Q", QUEUE, "--without-gossip", "--without-mingle",
        f"--hostname=digitbot-finetune@{socket.gethostname()}",
    ])
