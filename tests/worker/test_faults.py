"""Faults: a worker killed mid-job, the Redis broker down in scale-out mode."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.model.network import Checkpoint, DigitNet
from digitbot.settings import PROJECT_ROOT
from storage.models import QUEUED, RUNNING, SUCCEEDED
from tests.worker.conftest import active_version, add_labelled, fake_trainer, job_rows, random_digits
from worker import jobs
from worker.config import WorkerConfig
from worker.runner import CeleryDispatcher
from worker.scheduler import Sweeper


def inline_dispatch(config: WorkerConfig, factory: sessionmaker[Session]) -> Callable[[Sequence[int]], list[int]]:
    """Runs each handed job at once in this process (a surviving worker)."""
    def dispatch(job_ids: Sequence[int]) -> list[int]:
        for job_id in job_ids:
            jobs.run_job(job_id, config=config, worker_id="survivor", session_factory=factory,
                         base=Checkpoint(state_dict=DigitNet().state_dict()), device="cpu",
                         trainer=fake_trainer())
        return list(job_ids)
    return dispatch


@pytest.mark.slow
def test_killed_worker_job_is_retried_and_active_model_untouched(
        config: WorkerConfig, factory: sessionmaker[Session], tmp_path: Path) -> None:
    telegram_id = 77
    add_labelled(factory, telegram_id, *random_digits(12, seed=1))
    Sweeper(config, session_factory=factory, dispatch=inline_dispatch(config, factory)).sweep()
    assert active_version(factory, telegram_id) == 1
    add_labelled(factory, telegram_id, *random_digits(12, seed=2))
    (job_id,) = Sweeper(config, session_factory=factory, dispatch=lambda ids: []).sweep().created

    marker = tmp_path / "training"
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.worker.kill_child", config.database_url, str(job_id), str(marker)],
        cwd=PROJECT_ROOT, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, "the worker exited before training"
            assert time.monotonic() < deadline, "the worker never started training"
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL

    job = job_rows(factory, telegram_id)[-1]
    assert (job.id, job.state, job.attempts) == (job_id, RUNNING, 1)  # claimed by the dead worker
    assert active_version(factory, telegram_id) == 1  # untouched

    # Within the lease the job still belongs to the dead worker: nobody else trains it.
    survivor = inline_dispatch(config, factory)
    assert Sweeper(config, session_factory=factory, dispatch=survivor).sweep().requeued == 0
    assert job_rows(factory, telegram_id)[-1].state == RUNNING

    short_lease = replace(config, finetune_lease_s=0.2)
    time.sleep(0.3)
    report = Sweeper(short_lease, session_factory=factory, dispatch=survivor).sweep()
    assert report.requeued == 1 and report.dispatched == [job_id]
    job = job_rows(factory, telegram_id)[-1]
    assert (job.state, job.attempts, job.outcome) == (SUCCEEDED, 2, "promoted")
    assert active_version(factory, telegram_id) == 2


def test_redis_down_jobs_stay_queued(config: WorkerConfig, factory: sessionmaker[Session],
                                     caplog: pytest.LogCaptureFixture) -> None:
    add_labelled(factory, 88, *random_digits(12, seed=3))
    scale_out = replace(config, celery_broker_url="redis://127.0.0.1:1/0")  # nothing listens
    sweeper = Sweeper(scale_out, session_factory=factory, dispatch=CeleryDispatcher(scale_out))
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        first = sweeper.sweep()
        second = sweeper.sweep()
    assert time.monotonic() - started < 10
    assert len(first.created) == 1
    assert first.dispatched == [] and first.waiting == first.created
    assert second.created == [] and second.waiting == first.created  # tried again, still waiting
    assert [j.state for j in job_rows(factory, 88)] == [QUEUED]
    assert sum("unreachable" in r.getMessage() for r in caplog.records) == 2


def test_database_down_sweep_is_logged_not_raised(config: WorkerConfig, caplog: pytest.LogCaptureFixture) -> None:
    from storage.db import session_factory

    unreachable = session_factory("postgresql+psycopg://digitbot:secret@127.0.0.1:1/digitbot")
    sweeper = Sweeper(config, session_factory=unreachable, dispatch=lambda ids: list(ids))
    with caplog.at_level(logging.WARNING):
        assert sweeper.safe_sweep() is None
    assert any("database is unavailable" in r.getMessage() for r in caplog.records)
    assert not any("secret" in r.getMessage() for r in caplog.records)


def test_storing_the_model_fails_job_retried_active_model_kept(
        config: WorkerConfig, factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    from storage import repository

    add_labelled(factory, 99, *random_digits(12, seed=4))
    survivor = inline_dispatch(config, factory)
    Sweeper(config, session_factory=factory, dispatch=survivor).sweep()
    assert active_version(factory, 99) == 1
    add_labelled(factory, 99, *random_digits(12, seed=5))
    (job_id,) = Sweeper(config, session_factory=factory, dispatch=lambda ids: []).sweep().created

    def disk_full(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(repository, "add_model_version", disk_full)
        outcome = jobs.run_job(job_id, config=config, worker_id="w", session_factory=factory,
                               base=Checkpoint(state_dict=DigitNet().state_dict()), device="cpu",
                               trainer=fake_trainer())
    assert outcome.state == jobs.RETRY and "No space left" in outcome.reason
    assert active_version(factory, 99) == 1
    job = job_rows(factory, 99)[-1]
    assert (job.state, job.attempts) == (QUEUED, 1)
    assert jobs.run_job(job_id, config=config, worker_id="w", session_factory=factory,
                        base=Checkpoint(state_dict=DigitNet().state_dict()), device="cpu",
                        trainer=fake_trainer()).state == jobs.PROMOTED
    assert active_version(factory, 99) == 2
