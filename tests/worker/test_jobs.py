"""One job's state machine: promote, reject, retry, fencing, notifications."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.model.network import Checkpoint, DigitNet
from storage import repository as repo
from storage.models import FAILED, QUEUED, REJECTED, RETIRED, SUCCEEDED
from tests.worker.conftest import active_version, add_labelled, fake_trainer, job_rows, random_digits
from worker import jobs
from worker.config import WorkerConfig
from worker.scheduler import Sweeper

BASE = Checkpoint(state_dict=DigitNet().state_dict())


def queue_job(config: WorkerConfig, factory: sessionmaker[Session], telegram_id: int, labels: int = 12) -> int:
    add_labelled(factory, telegram_id, *random_digits(labels, seed=telegram_id))
    created = Sweeper(config, session_factory=factory, dispatch=lambda ids: []).sweep().created
    assert len(created) == 1
    return created[0]


def run(config: WorkerConfig, factory: sessionmaker[Session], job_id: int, **kwargs: Any) -> jobs.JobOutcome:
    kwargs.setdefault("trainer", fake_trainer())
    return jobs.run_job(job_id, config=config, worker_id="test", session_factory=factory, base=BASE,
                        device="cpu", **kwargs)


def test_promotion_then_rejection_keeps_the_active_model(config: WorkerConfig,
                                                         factory: sessionmaker[Session]) -> None:
    first = run(config, factory, queue_job(config, factory, 11))
    assert first.state == jobs.PROMOTED and active_version(factory, 11) == 1

    second_id = queue_job(config, factory, 11)
    second = run(config, factory, second_id, trainer=fake_trainer(promote=False, reason="worse: 0.5 -> 0.4"))
    assert second.state == jobs.REJECTED
    assert active_version(factory, 11) == 1  # untouched
    with factory() as session:
        user = repo.get_user(session, telegram_id=11)
        assert user is not None
        versions = repo.model_versions(session, user_id=user.id)
    assert [(v.version, v.status, v.status_reason) for v in versions][1] == (2, REJECTED, "worse: 0.5 -> 0.4")
    assert [j.outcome for j in job_rows(factory, 11)] == ["promoted", "rejected"]

    third = run(config, factory, queue_job(config, factory, 11))
    assert third.state == jobs.PROMOTED and active_version(factory, 11) == 3
    with factory() as session:
        statuses = [v.status for v in repo.model_versions(session, user_id=versions[0].user_id)]
    assert statuses == [RETIRED, REJECTED, "active"]  # the previous version kept for rollback


def test_the_same_job_is_never_run_twice(config: WorkerConfig, factory: sessionmaker[Session]) -> None:
    job_id = queue_job(config, factory, 12)
    calls: list[int] = []
    assert run(config, factory, job_id, trainer=fake_trainer(calls=calls)).state == jobs.PROMOTED
    assert run(config, factory, job_id, trainer=fake_trainer(calls=calls)).state == jobs.SKIPPED
    assert len(calls) == 1


def test_a_worker_that_lost_its_lease_writes_nothing(config: WorkerConfig, factory: sessionmaker[Session]) -> None:
    run(config, factory, queue_job(config, factory, 13))  # version 1 active
    job_id = queue_job(config, factory, 13)
    late: list[jobs.JobOutcome] = []

    def meanwhile() -> None:
        # While this worker trains, the sweep decides it is dead and another worker takes over.
        with factory.begin() as session:
            assert repo.requeue_stale_jobs(session, started_before=datetime.now(UTC) + timedelta(seconds=1)) == 1
        late.append(run(config, factory, job_id, trainer=fake_trainer(promote=True)))

    outcome = run(config, factory, job_id, trainer=fake_trainer(before=meanwhile))
    assert late[0].state == jobs.PROMOTED  # the second worker finished the job (version 2)
    assert outcome.state == jobs.LOST
    assert active_version(factory, 13) == 2
    with factory() as session:
        assert len(repo.model_versions(session, user_id=job_rows(factory, 13)[0].user_id)) == 2


def test_errors_are_retried_then_recorded(config: WorkerConfig, factory: sessionmaker[Session]) -> None:
    job_id = queue_job(config, factory, 14)

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("CUDA out of memory")

    states = [run(config, factory, job_id, trainer=broken).state for _ in range(config.finetune_max_attempts)]
    assert states == [jobs.RETRY, jobs.RETRY, jobs.FAILED]
    (job,) = job_rows(factory, 14)
    assert (job.state, job.attempts) == (FAILED, 3)
    assert "CUDA out of memory" in (job.error or "")
    assert active_version(factory, 14) is None


def test_promotions_are_announced_once(config: WorkerConfig, factory: sessionmaker[Session]) -> None:
    run(config, factory, queue_job(config, factory, 15, labels=20))
    told: list[tuple[int, dict[str, Any]]] = []
    sweepers = [Sweeper(config, session_factory=factory, dispatch=lambda ids: [],
                        notify=lambda tid, summary: told.append((tid, summary))) for _ in range(2)]
    for sweeper in sweepers:
        sweeper.sweep()
    assert len(told) == 1
    telegram_id, summary = told[0]
    assert telegram_id == 15
    assert summary["version"] == 1 and summary["labels"] == 20
    assert summary["accuracy_before"] == pytest.approx(0.5) and summary["accuracy_after"] == pytest.approx(0.9)


def test_a_failed_announcement_is_retried_by_the_next_sweep(config: WorkerConfig,
                                                          factory: sessionmaker[Session]) -> None:
    run(config, factory, queue_job(config, factory, 16))

    def notify(_tid: int, _summary: dict[str, Any]) -> None:
        raise ConnectionError("telegram unreachable")

    report = Sweeper(config, session_factory=factory, dispatch=lambda ids: [], notify=notify).sweep()
    assert report.notified == []
    told: list[int] = []
    retry = Sweeper(config, session_factory=factory, dispatch=lambda ids: [],
                    notify=lambda telegram_id, _summary: told.append(telegram_id)).sweep()
    assert told == [16] and len(retry.notified) == 1  # the failed announcement is tried again


def test_sweep_requeues_a_job_whose_worker_stopped(config: WorkerConfig, factory: sessionmaker[Session]) -> None:
    job_id = queue_job(config, factory, 17)
    with factory.begin() as session:
        assert repo.claim_job(session, job_id=job_id) is not None  # a worker claims it, then vanishes
    handed: list[Sequence[int]] = []

    def dispatch(job_ids: Sequence[int]) -> list[int]:
        handed.append(job_ids)
        return []

    short_lease = replace(config, finetune_lease_s=0.0)
    report = Sweeper(short_lease, session_factory=factory, dispatch=dispatch).sweep()
    assert report.requeued == 1 and list(handed[0]) == [job_id]
    (job,) = job_rows(factory, 17)
    assert (job.state, job.attempts) == (QUEUED, 1)
    assert run(config, factory, job_id).state == jobs.PROMOTED
    assert job_rows(factory, 17)[0].state == SUCCEEDED


def test_a_user_forgotten_mid_job_gets_no_model(config: WorkerConfig, factory: sessionmaker[Session]) -> None:
    job_id = queue_job(config, factory, 18)

    def forget() -> None:
        with factory.begin() as session:
            repo.forget_user(session, telegram_id=18)

    outcome = run(config, factory, job_id, trainer=fake_trainer(before=forget))
    assert outcome.state == jobs.LOST
    with factory() as session:
        assert repo.get_user(session, telegram_id=18) is None
        assert repo.get_job(session, job_id=job_id) is None
    assert Sweeper(config, session_factory=factory, dispatch=lambda ids: list(ids)).sweep().created == []
