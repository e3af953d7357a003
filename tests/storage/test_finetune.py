from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from storage import repository as repo
from storage.errors import CorruptWeights, InvalidTransition, UnknownJob, UnknownModelVersion
from storage.models import FinetuneJob, ModelVersion, Reading, User, utcnow
from tests.storage.conftest import digits


def labelled_user(factory: sessionmaker[Session], telegram_id: int, answers: str, labels: str | None = None) -> int:
    with factory.begin() as s:
        rec = repo.record_reading(s, telegram_id=telegram_id, chat_id=1, file_id="F", file_unique_id="U",
                                  digits=digits(answers))
        if labels is not None:
            repo.label_reading(s, telegram_id=telegram_id, reading_id=rec.reading_id, digits=labels)
        return rec.user_id


def brute_force_new_labels(s: Session, user_id: int) -> int:
    user = s.get(User, user_id, populate_existing=True)
    assert user is not None
    return repo.current_label_count(s, user_id=user_id, since=user.finetune_started_at)


def test_users_due_counts_current_labels_since_the_last_run(factory: sessionmaker[Session]) -> None:
    a = labelled_user(factory, 1, "1234", "1234")
    b = labelled_user(factory, 2, "12", "12")
    labelled_user(factory, 3, "12345")  # recognised but never labelled
    with factory() as s:
        assert repo.users_due_for_finetune(s, min_labels=3) == [a]
        assert repo.users_due_for_finetune(s, min_labels=2) == [a, b]
        assert repo.users_due_for_finetune(s, min_labels=2, limit=1) == [a]

    # Re-labelling a sample does not count twice; undo takes the label back.
    with factory.begin() as s:
        reading = s.scalars(select(func.min(Reading.id)).where(Reading.user_id == b)).one()
        repo.label_sample(s, telegram_id=2, reading_id=reading, position=0, digit=7)
        repo.label_sample(s, telegram_id=2, reading_id=reading, position=0, digit=8)
        assert brute_force_new_labels(s, b) == 2
        repo.undo_label(s, telegram_id=2, reading_id=reading, position=1)
        assert brute_force_new_labels(s, b) == 1
        assert s.get(User, b).labels_since_finetune == 1  # type: ignore[union-attr]

    with factory.begin() as s:
        job = repo.create_finetune_job(s, user_id=a)
        assert job is not None
        assert repo.users_due_for_finetune(s, min_labels=1) == [b]  # a has an open job
        claimed = repo.claim_job(s, job_id=job.id)
        assert claimed is not None and claimed.state == "running" and claimed.attempts == 1
        repo.finish_job(s, job_id=job.id, metrics={"acc": 0.9}, outcome="rejected")
        assert repo.users_due_for_finetune(s, min_labels=1) == [b]  # a's labels predate the run
        assert brute_force_new_labels(s, a) == 0

    # Labels after the run started count again, including a new label on an old sample.
    with factory.begin() as s:
        repo.label_sample(s, telegram_id=1, reading_id=1, position=0, digit=9)
    labelled_user(factory, 1, "56", "56")
    with factory() as s:
        assert s.get(User, a).labels_since_finetune == brute_force_new_labels(s, a) == 3  # type: ignore[union-attr]
        assert repo.users_due_for_finetune(s, min_labels=3) == [a]


def test_one_open_job_per_user(factory: sessionmaker[Session]) -> None:
    user = labelled_user(factory, 1, "1", "1")
    with factory.begin() as s:
        first = repo.create_finetune_job(s, user_id=user)
        assert first is not None
        assert repo.create_finetune_job(s, user_id=user) is None
        assert repo.create_finetune_job(s, user_id=99999) is None
    with pytest.raises(IntegrityError), factory.begin() as s:  # the database itself refuses
        s.add(FinetuneJob(user_id=user, state="queued", attempts=0, created_at=utcnow(), metrics={}))
    with factory.begin() as s:
        repo.claim_job(s)
        assert repo.create_finetune_job(s, user_id=user) is None  # running counts as open
        repo.fail_job(s, job_id=first.id, error="boom", retry=False)
        second = repo.create_finetune_job(s, user_id=user)
        assert second is not None and second.id != first.id


def test_claim_retry_and_failure(factory: sessionmaker[Session]) -> None:
    u1, u2 = labelled_user(factory, 1, "1", "1"), labelled_user(factory, 2, "2", "2")
    with factory.begin() as s:
        j1, j2 = repo.create_finetune_job(s, user_id=u1), repo.create_finetune_job(s, user_id=u2)
        assert j1 is not None and j2 is not None
    with factory.begin() as s:
        claimed = repo.claim_job(s)
        assert claimed is not None and claimed.id == j1.id  # oldest first
        assert repo.claim_job(s, job_id=j1.id) is None  # no longer queued
        with pytest.raises(InvalidTransition):
            repo.finish_job(s, job_id=j2.id, metrics={}, outcome="x")  # not running
        with pytest.raises(UnknownJob):
            repo.fail_job(s, job_id=12345, error="?", retry=True)
        for attempt in (1, 2):
            job = repo.fail_job(s, job_id=j1.id, error=f"oom {attempt}", retry=True, max_attempts=3)
            assert job.state == "queued" and job.attempts == attempt
            assert repo.claim_job(s, job_id=j1.id) is not None
        job = repo.fail_job(s, job_id=j1.id, error="oom 3", retry=True, max_attempts=3)
        assert (job.state, job.attempts, job.error, job.outcome) == ("failed", 3, "oom 3", "failed")
        assert job.finished_at is not None


def test_requeue_stale_jobs(factory: sessionmaker[Session]) -> None:
    user = labelled_user(factory, 1, "1", "1")
    with factory.begin() as s:
        job = repo.create_finetune_job(s, user_id=user)
        assert job is not None
        repo.claim_job(s, job_id=job.id)
        assert repo.requeue_stale_jobs(s, started_before=utcnow() - timedelta(hours=1)) == 0
        assert repo.requeue_stale_jobs(s, started_before=utcnow() + timedelta(seconds=1)) == 1
        assert repo.get_job(s, job_id=job.id).state == "queued"  # type: ignore[union-attr]


def test_model_versions_promote_retire_reject(factory: sessionmaker[Session]) -> None:
    alice, bob = labelled_user(factory, 1, "1"), labelled_user(factory, 2, "2")
    with factory.begin() as s:
        v1 = repo.add_model_version(s, user_id=alice, parent_id=None, weights=b"one", metrics={"acc": 0.9})
        v2 = repo.add_model_version(s, user_id=alice, parent_id=v1.id, weights=b"two", metrics={"acc": 0.95})
        v3 = repo.add_model_version(s, user_id=alice, parent_id=v2.id, weights=b"three", metrics={})
        assert (v1.version, v2.version, v3.version, v1.status) == (1, 2, 3, "candidate")
        assert repo.active_model_version(s, user_id=alice) is None
        repo.promote_model_version(s, user_id=alice, version_id=v1.id)
        repo.promote_model_version(s, user_id=alice, version_id=v2.id)
        repo.reject_model_version(s, user_id=alice, version_id=v3.id, reason="worse on held-out")
    with factory.begin() as s:
        statuses = {v.version: v.status for v in repo.model_versions(s, user_id=alice)}
        assert statuses == {1: "retired", 2: "active", 3: "rejected"}
        active = repo.active_model_version(s, user_id=alice)
        assert active is not None and active.id == v2.id and active.promoted_at is not None
        assert repo.load_weights(s, user_id=alice, version_id=v2.id) == b"two"
        with pytest.raises(InvalidTransition):
            repo.promote_model_version(s, user_id=alice, version_id=v3.id)
        with pytest.raises(UnknownModelVersion):  # scoped by user
            repo.promote_model_version(s, user_id=bob, version_id=v1.id)
        with pytest.raises(UnknownModelVersion):
            repo.load_weights(s, user_id=bob, version_id=v1.id)
        repo.promote_model_version(s, user_id=alice, version_id=v1.id)  # rollback to a retired one
        assert repo.active_model_version(s, user_id=alice).id == v1.id  # type: ignore[union-attr]
        assert repo.retire_active_model(s, user_id=alice) is not None
        assert repo.active_model_version(s, user_id=alice) is None
    with pytest.raises(IntegrityError), factory.begin() as s:  # two active ones: the database refuses
        for version in s.scalars(select(ModelVersion).where(ModelVersion.user_id == alice)):
            version.status = "active"


def test_weights_in_a_directory(db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from storage.db import session_factory

    factory = session_factory(db_url, weights_dir=tmp_path / "w")
    user = labelled_user(factory, 1, "1")
    with factory.begin() as s:
        version = repo.add_model_version(s, user_id=user, parent_id=None, weights=b"x" * 1000, metrics={})
    assert version.weights_path is not None
    path = tmp_path / "w" / version.weights_path
    assert path.read_bytes() == b"x" * 1000
    with factory() as s:
        assert repo.load_weights(s, user_id=user, version_id=version.id) == b"x" * 1000
        assert s.scalar(select(ModelVersion.weights)) is None
    with pytest.raises(RuntimeError), factory.begin() as s:  # a rolled-back write leaves no file
        repo.add_model_version(s, user_id=user, parent_id=None, weights=b"y", metrics={})
        raise RuntimeError("crash after writing")
    assert [p.name for p in (tmp_path / "w").rglob("*.bin")] == [path.name]
    path.write_bytes(b"tampered")
    with factory() as s, pytest.raises(CorruptWeights):
        repo.load_weights(s, user_id=user, version_id=version.id)
    factory.kw["bind"].dispose()
