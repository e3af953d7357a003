"""Concurrent writers (threads with their own sessions) on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from storage import repository as repo
from storage.models import FinetuneJob, ModelVersion, Sample, User
from tests.storage.conftest import digits

T = TypeVar("T")


def run_together(count: int, work: Callable[[int], T]) -> list[T]:
    """Run ``work(i)`` in ``count`` threads released at the same moment; re-raise any error."""
    barrier = threading.Barrier(count)
    results: list[T | None] = [None] * count
    errors: list[BaseException] = []

    def target(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except BaseException as error:  # collected and re-raised in the main thread
            errors.append(error)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]


def make_user(factory: sessionmaker[Session], telegram_id: int = 1) -> int:
    with factory.begin() as s:
        return repo.get_or_create_user(s, telegram_id=telegram_id).id


def test_exactly_one_active_under_concurrent_promotion(factory: sessionmaker[Session]) -> None:
    user = make_user(factory)
    with factory.begin() as s:
        ids = [repo.add_model_version(s, user_id=user, parent_id=None, weights=bytes([i]), metrics={}).id
               for i in range(6)]

    def promote(i: int) -> str:
        with factory.begin() as s:
            return repo.promote_model_version(s, user_id=user, version_id=ids[i]).status

    assert run_together(len(ids), promote) == ["active"] * len(ids)
    with factory() as s:
        statuses = sorted(s.scalars(select(ModelVersion.status).where(ModelVersion.user_id == user)))
    assert statuses == ["active"] + ["retired"] * (len(ids) - 1)


def test_concurrent_sweeps_queue_one_job(factory: sessionmaker[Session]) -> None:
    user = make_user(factory)

    def create(_: int) -> bool:
        with factory.begin() as s:
            return repo.create_finetune_job(s, user_id=user) is not None

    assert sorted(run_together(4, create)) == [False, False, False, True]
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(FinetuneJob)) == 1


def test_concurrent_claims_take_each_job_once(factory: sessionmaker[Session]) -> None:
    with factory.begin() as s:
        for telegram_id in range(3):
            repo.create_finetune_job(s, user_id=repo.get_or_create_user(s, telegram_id=telegram_id).id)

    def claim(_: int) -> int | None:
        with factory.begin() as s:
            job = repo.claim_job(s)
            return None if job is None else job.id

    claimed = [j for j in run_together(5, claim) if j is not None]
    assert len(claimed) == len(set(claimed)) == 3


def test_redelivered_update_and_first_contact_races(factory: sessionmaker[Session]) -> None:
    def handle(_: int) -> tuple[bool, int]:
        with factory.begin() as s:
            fresh = repo.mark_update_processed(s, update_id=42)
            return fresh, repo.get_or_create_user(s, telegram_id=7).id

    results = run_together(4, handle)
    assert sorted(fresh for fresh, _ in results) == [False, False, False, True]
    assert len({user for _, user in results}) == 1


def test_bot_and_worker_write_at_the_same_time(factory: sessionmaker[Session]) -> None:
    rounds = 15

    bot_done = threading.Event()

    def bot(_: int) -> None:
        try:
            for i in range(rounds):
                with factory.begin() as s:
                    rec = repo.record_reading(s, telegram_id=1, chat_id=1, file_id=f"F{i}", file_unique_id="U",
                                              digits=digits("12"))
                with factory.begin() as s:
                    repo.label_reading(s, telegram_id=1, reading_id=rec.reading_id, digits="17")
        finally:
            bot_done.set()

    def worker(_: int) -> None:
        last_round = False
        while not last_round:  # keep sweeping while the bot writes, then once more
            last_round = bot_done.is_set()
            time.sleep(0.02)
            with factory.begin() as s:
                for user_id in repo.users_due_for_finetune(s, min_labels=2):
                    repo.create_finetune_job(s, user_id=user_id)
            with factory.begin() as s:
                job = repo.claim_job(s)
            if job is None:
                continue
            with factory() as s:
                data = repo.training_set(s, user_id=job.user_id)
            with factory.begin() as s:
                version = repo.add_model_version(s, user_id=job.user_id, parent_id=None,
                                                 weights=data.labels.tobytes(), metrics={"n": len(data)})
                repo.promote_model_version(s, user_id=job.user_id, version_id=version.id)
                repo.finish_job(s, job_id=job.id, metrics={"n": len(data)}, outcome="promoted",
                                model_version_id=version.id)

    run_together(2, lambda i: bot(i) if i == 0 else worker(i))
    with factory() as s:
        user = s.scalars(select(User)).one()
        assert s.scalar(select(func.count()).select_from(Sample)) == 2 * rounds
        assert len(repo.training_set(s, user_id=user.id)) == 2 * rounds
        assert user.labels_since_finetune == repo.current_label_count(
            s, user_id=user.id, since=user.finetune_started_at)
        active = s.scalars(select(ModelVersion).where(ModelVersion.status == "active")).all()
        assert len(repo.model_versions(s, user_id=user.id)) >= 1 and len(active) == 1
        assert not s.scalars(select(FinetuneJob).where(FinetuneJob.state == "running")).all()


def test_concurrent_taps_on_one_digit_leave_one_current_label(factory: sessionmaker[Session]) -> None:
    from storage.models import Label

    with factory.begin() as s:
        rec = repo.record_reading(s, telegram_id=1, chat_id=1, file_id="F", file_unique_id="U", digits=digits("5"))

    def tap(i: int) -> int:
        with factory.begin() as s:
            return repo.label_sample(s, telegram_id=1, reading_id=rec.reading_id, position=0, digit=i + 1).digit

    assert sorted(run_together(4, tap)) == [1, 2, 3, 4]
    with factory() as s:
        rows = s.execute(select(Label.digit, Label.superseded_at)).all()
        user = s.scalars(select(User)).one()
        assert len(rows) == 4 and sum(at is None for _, at in rows) == 1
        assert user.labels_since_finetune == 1 == repo.current_label_count(s, user_id=user.id)
