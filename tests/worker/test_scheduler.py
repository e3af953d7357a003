"""The sweep: jobs only for due users, never two open jobs for one user, /train requests."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from storage import repository as repo
from storage.models import QUEUED
from tests.worker.conftest import add_labelled, job_rows, random_digits
from worker.config import WorkerConfig
from worker.scheduler import Sweeper, request_finetune


class Recorder:
    """A dispatcher that only records what it was handed (jobs stay queued)."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(self, job_ids: Sequence[int]) -> list[int]:
        self.calls.append(list(job_ids))
        return list(job_ids)


def test_sweep_creates_jobs_only_for_due_users(config: WorkerConfig, factory: sessionmaker[Session]) -> None:
    add_labelled(factory, 101, *random_digits(12, seed=1))  # due: 12 >= 10 new labels
    add_labelled(factory, 102, *random_digits(9, seed=2))  # not due yet
    dispatch = Recorder()
    report = Sweeper(config, session_factory=factory, dispatch=dispatch).sweep()

    assert len(report.created) == 1
    assert [j.state for j in job_rows(factory, 101)] == [QUEUED]
    assert job_rows(factory, 102) == []
    assert dispatch.calls == [report.created]


def test_sweep_never_opens_a_second_job_for_a_user(config: WorkerConfig, factory: sessionmaker[Session]) -> None:
    add_labelled(factory, 201, *random_digits(16, seed=3))
    sweeper = Sweeper(config, session_factory=factory, dispatch=Recorder())
    first = sweeper.sweep()
    add_labelled(factory, 201, *random_digits(16, seed=4))  # more labels while the job is queued
    second = sweeper.sweep()

    assert len(first.created) == 1 and second.created == []
    assert second.dispatched == first.created  # the open job is handed over again, not duplicated
    assert len(job_rows(factory, 201)) == 1


def test_concurrent_sweeps_create_one_job(config: WorkerConfig, factory: sessionmaker[Session]) -> None:
    add_labelled(factory, 301, *random_digits(12, seed=5))
    sweepers = [Sweeper(config, session_factory=factory, dispatch=Recorder()) for _ in range(4)]
    barrier = threading.Barrier(len(sweepers))
    created: list[int] = []

    def run(sweeper: Sweeper) -> None:
        barrier.wait()
        created.extend(sweeper.sweep().created)

    threads = [threading.Thread(target=run, args=(s,)) for s in sweepers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(created) == 1
    assert len(job_rows(factory, 301)) == 1


def test_request_finetune_explains_refusals(config: WorkerConfig, factory: sessionmaker[Session]) -> None:
    assert request_finetune(999, min_labels=config.finetune_min_labels,
                            session_factory=factory).reason == "unknown_user"

    add_labelled(factory, 401, *random_digits(3, seed=6))
    refused = request_finetune(401, min_labels=config.finetune_min_labels, session_factory=factory)
    assert (refused.accepted, refused.reason, refused.labels, refused.needed) == (False, "not_enough_labels", 3, 5)

    add_labelled(factory, 401, *random_digits(3, seed=7))  # 6 labels: below the sweep's 10, enough for /train
    queued = request_finetune(401, min_labels=config.finetune_min_labels, session_factory=factory)
    assert queued.accepted and queued.reason == "queued" and queued.job_id is not None
    again = request_finetune(401, min_labels=config.finetune_min_labels, session_factory=factory)
    assert (again.accepted, again.reason, again.job_id) == (True, "already_queued", queued.job_id)
    assert len(job_rows(factory, 401)) == 1


def test_sweep_removes_orphaned_weight_files_at_start_up_then_periodically(
        config: WorkerConfig, factory: sessionmaker[Session], tmp_path: Path) -> None:
    root = tmp_path / "orphans"
    factory.kw["info"]["weights_dir"] = root
    with factory.begin() as session:  # a referenced file, old
        user = repo.get_or_create_user(session, telegram_id=301)
        version = repo.add_model_version(session, user_id=user.id, parent_id=None, weights=b"k" * 64, metrics={})
        assert version.weights_path is not None
        kept = root / version.weights_path
    orphan = root / "99" / "0123456789abcdef-0123456789ab.bin"  # its process died before the commit
    orphan.parent.mkdir()
    orphan.write_bytes(b"o" * 64)
    then = time.time() - 7200
    for path in (kept, orphan):
        os.utime(path, (then, then))

    sweeper = Sweeper(config, session_factory=factory, dispatch=Recorder())
    assert sweeper.sweep().orphans_removed == ["99/0123456789abcdef-0123456789ab.bin"]  # the first sweep
    assert kept.exists() and not orphan.exists()

    orphan.write_bytes(b"o" * 64)
    os.utime(orphan, (then, then))
    assert sweeper.sweep().orphans_removed == []  # not at every sweep...
    assert sweeper.remove_orphan_weights(force=True) == ["99/0123456789abcdef-0123456789ab.bin"]  # ...periodically
    assert kept.exists()
