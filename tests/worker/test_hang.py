"""A hung fine-tune: timed out by the embedded worker's watchdog and by Celery, and its lease is
renewed only while training progresses."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

import pytest
import torch
from sqlalchemy.orm import Session, sessionmaker

from core.model.network import Checkpoint, DigitNet
from storage import repository as repo
from storage.models import QUEUED, SUCCEEDED, FinetuneJob
from storage.records import Claim
from tests.worker.conftest import active_version, add_labelled, fake_trainer, job_rows, random_digits
from worker import celery_app, jobs
from worker.config import WorkerConfig
from worker.runner import LocalDispatcher
from worker.scheduler import Sweeper


def wait_until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def create_jobs(config: WorkerConfig, factory: sessionmaker[Session], *telegram_ids: int) -> list[int]:
    for seed, telegram_id in enumerate(telegram_ids):
        add_labelled(factory, telegram_id, *random_digits(12, seed=seed))
    return Sweeper(config, session_factory=factory, dispatch=lambda ids: []).sweep().created


def test_hung_job_is_failed_and_retried_and_the_next_users_job_runs(
        config: WorkerConfig, factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    import core.personal.finetune

    fast = replace(config, finetune_time_limit_s=0.5, finetune_stall_s=60.0)
    hung_id, next_id = create_jobs(fast, factory, 501, 502)
    release = threading.Event()
    calls: list[int] = []

    def hang_first_call() -> None:
        if len(calls) == 0:
            calls.append(0)
            release.wait(30)  # blocked: no training step, no return

    monkeypatch.setattr(jobs, "cached_base", lambda _path: Checkpoint(state_dict=DigitNet().state_dict()))
    monkeypatch.setattr(core.personal.finetune, "finetune_user", fake_trainer(before=hang_first_call))
    local = LocalDispatcher(fast, factory)
    try:
        assert local([hung_id, next_id]) == [hung_id, next_id]
        wait_until(local.idle)
        hung, following = job_rows(factory, 501)[-1], job_rows(factory, 502)[-1]
        assert (hung.state, hung.attempts) == (QUEUED, 1)  # failed, retried per the attempt rules
        assert "timed out after 0.5 s" in (hung.error or "")
        assert following.state == SUCCEEDED and active_version(factory, 502) == 1

        assert local([hung_id]) == [hung_id]  # the retry, in a fresh thread
        wait_until(local.idle)
        retried = job_rows(factory, 501)[-1]
        assert (retried.state, retried.attempts) == (SUCCEEDED, 2)
        assert active_version(factory, 501) == 1
    finally:
        release.set()  # the abandoned thread wakes up: its writes are fenced out
        local.shutdown()
    time.sleep(0.3)
    assert [j.state for j in job_rows(factory, 501)] == [SUCCEEDED]
    assert active_version(factory, 501) == 1


def test_job_past_its_last_attempt_is_failed(
        config: WorkerConfig, factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    import core.personal.finetune

    fast = replace(config, finetune_time_limit_s=0.3, finetune_max_attempts=1)
    (job_id,) = create_jobs(fast, factory, 503)
    release = threading.Event()

    def hang() -> None:
        release.wait(30)

    monkeypatch.setattr(jobs, "cached_base", lambda _path: Checkpoint(state_dict=DigitNet().state_dict()))
    monkeypatch.setattr(core.personal.finetune, "finetune_user", fake_trainer(before=hang))
    local = LocalDispatcher(fast, factory)
    try:
        local([job_id])
        wait_until(local.idle)
    finally:
        release.set()
        local.shutdown()
    (job,) = job_rows(factory, 503)
    assert (job.state, job.attempts, job.outcome) == ("failed", 1, "failed")


def test_stalled_training_is_abandoned_and_retried(config: WorkerConfig, factory: sessionmaker[Session]) -> None:
    fast = replace(config, finetune_lease_s=0.4, finetune_stall_s=0.2)
    (job_id,) = create_jobs(fast, factory, 504)
    outcome = jobs.run_job(job_id, config=fast, worker_id="w", session_factory=factory,
                           base=Checkpoint(state_dict=DigitNet().state_dict()), device="cpu",
                           trainer=fake_trainer(before=lambda: time.sleep(0.8)))
    assert outcome.state == jobs.RETRY and "no training progress" in outcome.reason
    (job,) = job_rows(factory, 504)
    assert (job.state, job.attempts) == (QUEUED, 1)


def lease_of(factory: sessionmaker[Session], job_id: int) -> datetime | None:
    with factory() as session:
        job = session.get(FinetuneJob, job_id)
        assert job is not None
        return job.started_at


def test_lease_is_renewed_only_while_training_steps(config: WorkerConfig, factory: sessionmaker[Session]) -> None:
    (job_id,) = create_jobs(config, factory, 505)
    with factory.begin() as session:
        claimed = repo.claim_job(session, job_id=job_id)
        assert claimed is not None
        claim = Claim(job_id=job_id, user_id=claimed.user_id, telegram_id=505, attempt=claimed.attempts)
    progress = jobs.Progress()
    model = DigitNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with jobs.Heartbeat(factory, [claim], interval_s=0.05, progress=progress, stall_s=0.3) as heartbeat, \
            progress.bound():
        first = lease_of(factory, job_id)
        for _ in range(8):  # real optimiser steps tick the progress through the torch hook
            optimizer.zero_grad()
            model(torch.randn(2, 1, 28, 28)).sum().backward()
            optimizer.step()
            time.sleep(0.05)
        assert progress.steps >= 8
        renewed = lease_of(factory, job_id)
        assert renewed is not None and first is not None and renewed > first
        wait_until(lambda: heartbeat.stalled, timeout_s=5)
        stalled_at = lease_of(factory, job_id)
        time.sleep(0.3)
        assert lease_of(factory, job_id) == stalled_at  # no longer renewed
        assert progress.abandoned
        with pytest.raises(jobs.JobAbandoned):
            optimizer.step()  # the training resumes: its next step stops it


@pytest.fixture
def worker(config: WorkerConfig) -> WorkerConfig:
    return config


def test_celery_fine_tune_tasks_have_time_limits(worker: WorkerConfig) -> None:
    config = celery_app.celery_config(replace(worker, finetune_time_limit_s=900.0))
    assert config["task_soft_time_limit"] == 900.0
    assert config["task_time_limit"] > config["task_soft_time_limit"]
    assert config["broker_transport_options"]["visibility_timeout"] > config["task_time_limit"]


