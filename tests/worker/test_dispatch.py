"""The Celery dispatcher's memory of what it sent (fast; the real thing is test_celery_faults.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest
from sqlalchemy.orm import Session, sessionmaker

from storage import repository as repo
from tests.worker.conftest import add_labelled, random_digits
from worker import celery_app, runner
from worker.config import WorkerConfig
from worker.runner import CeleryDispatcher
from worker.scheduler import Sweeper


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    published: list[list[int]] = []

    def publish(job_ids: Sequence[int], **_: object) -> bool:
        published.append(list(job_ids))
        return True
    monkeypatch.setattr(celery_app, "publish", publish)
    return published


def test_a_job_requeued_after_its_worker_died_is_published_again_at_once(
        config: WorkerConfig, factory: sessionmaker[Session], sent: list[list[int]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "broker_run_id", lambda url: "run-1")
    scale_out = replace(config, celery_broker_url="redis://127.0.0.1:1/0", finetune_lease_s=0.0)
    add_labelled(factory, 501, *random_digits(12, seed=1))
    sweeper = Sweeper(scale_out, session_factory=factory, dispatch=CeleryDispatcher(scale_out))
    (job_id,) = sweeper.sweep().created
    assert sent == [[job_id]]
    with factory.begin() as session:  # a worker claims it (and will die: lease 0 s)
        assert repo.claim_job(session, job_id=job_id) is not None
    report = sweeper.sweep()  # nothing else queued: the lease has run out, re-queued and sent again
    assert report.requeued == 1 and report.dispatched == [job_id]
    assert sent == [[job_id], [job_id]]


def test_queued_jobs_are_published_again_when_redis_restarted(
        config: WorkerConfig, factory: sessionmaker[Session], sent: list[list[int]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = ["run-1"]
    monkeypatch.setattr(runner, "broker_run_id", lambda url: run_id[0])
    scale_out = replace(config, celery_broker_url="redis://127.0.0.1:1/0")
    add_labelled(factory, 502, *random_digits(12, seed=2))
    sweeper = Sweeper(scale_out, session_factory=factory, dispatch=CeleryDispatcher(scale_out))
    (job_id,) = sweeper.sweep().created
    assert sweeper.sweep().dispatched == []  # sent already: not again within republish_after_s
    run_id[0] = "run-2"  # Redis restarted (and lost the message)
    assert sweeper.sweep().dispatched == [job_id]
    assert sweeper.sweep().dispatched == []
    assert sent == [[job_id], [job_id]]


def test_broker_run_id_is_none_without_redis() -> None:
    assert runner.broker_run_id("redis://127.0.0.1:1/0") is None  # nothing listens
    assert runner.broker_run_id("amqp://guest@127.0.0.1//") is None
