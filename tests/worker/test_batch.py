"""Several due users fine-tuned together by one worker (the GPU path), each job still on its own."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.model.network import Checkpoint, DigitNet
from core.personal.batched_finetune import UserSamples
from core.personal.finetune import FinetuneResult
from storage import repository as repo
from tests.worker.conftest import active_version, add_labelled, fake_trainer, job_rows, random_digits, styled_writer
from worker import celery_app, jobs
from worker.config import WorkerConfig
from worker.runner import CeleryDispatcher, LocalDispatcher
from worker.scheduler import Sweeper

BASE = Checkpoint(state_dict=DigitNet().state_dict())


def queue_jobs(config: WorkerConfig, factory: sessionmaker[Session], telegram_ids: Sequence[int]) -> list[int]:
    for telegram_id in telegram_ids:
        add_labelled(factory, telegram_id, *random_digits(12, seed=telegram_id))
    return Sweeper(config, session_factory=factory, dispatch=lambda ids: []).sweep().created


def batch_of(verdicts: dict[int, bool], seen: list[int]) -> Any:
    """A stand-in for core.personal.batched_finetune.finetune_users: promote or reject by label count."""
    def train(base: Checkpoint, users: Sequence[UserSamples], **_: Any) -> list[FinetuneResult]:
        seen.append(len(users))
        return [fake_trainer(promote=verdicts[len(u.labels)])(base, u.images, u.labels) for u in users]
    return train


def test_jobs_trained_together_finish_one_by_one(config: WorkerConfig, factory: sessionmaker[Session]) -> None:
    first, second, third = queue_jobs(config, factory, [501, 502, 503])
    add_labelled(factory, 502, *random_digits(3, seed=9))  # 15 labels: this one gets rejected
    with factory.begin() as session:
        repo.claim_job(session, job_id=third)  # another worker holds this one
    seen: list[int] = []
    outcomes = jobs.run_jobs([first, second, third], config=config, worker_id="gpu", session_factory=factory,
                             base=BASE, device="cpu", batch_trainer=batch_of({12: True, 15: False}, seen))

    assert seen == [2]  # one batch with the two claimable jobs
    assert [o.state for o in outcomes] == [jobs.PROMOTED, jobs.REJECTED, jobs.SKIPPED]
    assert (active_version(factory, 501), active_version(factory, 502)) == (1, None)
    assert [j.outcome for j in job_rows(factory, 502)] == ["rejected"]


def test_a_failed_batch_requeues_every_job(config: WorkerConfig, factory: sessionmaker[Session]) -> None:
    job_ids = queue_jobs(config, factory, [511, 512])

    def out_of_memory(*_: Any, **__: Any) -> list[FinetuneResult]:
        raise RuntimeError("CUDA out of memory")

    outcomes = jobs.run_jobs(job_ids, config=config, worker_id="gpu", session_factory=factory, base=BASE,
                             device="cpu", batch_trainer=out_of_memory)
    assert [o.state for o in outcomes] == [jobs.RETRY, jobs.RETRY]
    assert [job_rows(factory, t)[0].state for t in (511, 512)] == ["queued", "queued"]


def test_dispatchers_group_jobs_by_batch_size(config: WorkerConfig, factory: sessionmaker[Session],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[list[int]] = []

    def publish(job_ids: Sequence[int], celery: Any = None) -> bool:
        sent.append(list(job_ids))
        return True

    monkeypatch.setattr(celery_app, "publish", publish)
    batched = replace(config, finetune_batch_size=2, celery_broker_url="redis://127.0.0.1:1/0")
    dispatcher = CeleryDispatcher(batched)
    assert dispatcher([1, 2, 3, 4, 5]) == [1, 2, 3, 4, 5]
    assert sent == [[1, 2], [3, 4], [5]]
    assert dispatcher([1, 2, 3, 4, 5]) == []  # published recently: not sent again

    local = LocalDispatcher(batched, factory)
    ran: list[list[int]] = []
    monkeypatch.setattr(local, "_run", lambda ids, _progress: ran.append(ids))
    assert local([7, 8, 9]) == [7, 8, 9]
    deadline = time.monotonic() + 10
    while not local.idle() and time.monotonic() < deadline:
        time.sleep(0.01)
    local.shutdown()
    assert ran == [[7, 8], [9]]


@pytest.mark.slow
def test_real_batched_finetune_for_two_writers(config: WorkerConfig, factory: sessionmaker[Session]) -> None:
    if not config.base_weights.exists():
        pytest.skip(f"base weights not found at {config.base_weights}")
    for telegram_id, seed in ((601, 1), (602, 2)):
        user = styled_writer(seed, n=60)
        add_labelled(factory, telegram_id, user.images, user.labels)
    job_ids = Sweeper(config, session_factory=factory, dispatch=lambda ids: []).sweep().created
    outcomes = jobs.run_jobs(job_ids, config=config, worker_id="batch", session_factory=factory, device="cpu")
    assert [o.state for o in outcomes] == [jobs.PROMOTED, jobs.PROMOTED], [o.reason for o in outcomes]
    assert all(o.metrics["heldout_after"] > o.metrics["heldout_before"] for o in outcomes)
