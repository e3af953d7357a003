from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from storage import repository as repo
from storage.db import session_factory
from storage.models import Base, Reading
from tests.storage.conftest import digits

ALICE, BOB = 1001, 2002


def populate(factory: sessionmaker[Session], telegram_id: int) -> int:
    with factory.begin() as s:
        repo.mark_update_processed(s, update_id=telegram_id)
        rec = repo.record_reading(s, telegram_id=telegram_id, chat_id=telegram_id, file_id="F",
                                  file_unique_id="U", digits=digits("4271"))
        repo.attach_bot_message(s, reading_id=rec.reading_id, chat_id=telegram_id, message_id=5)
        repo.label_reading(s, telegram_id=telegram_id, reading_id=rec.reading_id, digits="4279")
        repo.label_sample(s, telegram_id=telegram_id, reading_id=rec.reading_id, position=3, digit=1)
        repo.set_true_text(s, telegram_id=telegram_id, reading_id=rec.reading_id, text="42711")
        v1 = repo.add_model_version(s, user_id=rec.user_id, parent_id=None, weights=b"w1", metrics={})
        v2 = repo.add_model_version(s, user_id=rec.user_id, parent_id=v1.id, weights=b"w2", metrics={})
        repo.promote_model_version(s, user_id=rec.user_id, version_id=v2.id)
        job = repo.create_finetune_job(s, user_id=rec.user_id)
        assert job is not None
        repo.claim_job(s, job_id=job.id)
        repo.finish_job(s, job_id=job.id, metrics={}, outcome="promoted", model_version_id=v2.id)
        repo.create_finetune_job(s, user_id=rec.user_id)
        # A prediction answered by the personal model points at a model version.
        repo.record_reading(s, telegram_id=telegram_id, chat_id=telegram_id, file_id="G", file_unique_id="V",
                            digits=digits("7", source="personal", model_version_id=v2.id))
        return rec.user_id


def table_counts(s: Session) -> dict[str, int]:
    return {t.name: s.scalar(select(func.count()).select_from(t)) or 0 for t in Base.metadata.sorted_tables}


def test_forget_leaves_nothing_of_that_user(db_url: str, tmp_path: Path) -> None:
    factory = session_factory(db_url, weights_dir=tmp_path / "weights")
    populate(factory, BOB)
    with factory() as s:
        only_bob = table_counts(s)
    alice = populate(factory, ALICE)
    assert len(list((tmp_path / "weights" / str(alice)).glob("*.bin"))) == 2
    with factory.begin() as s:
        deleted = repo.forget_user(s, telegram_id=ALICE)
    with factory() as s:
        after = table_counts(s)
        assert repo.count_user_rows(s, user_id=alice) == dict.fromkeys(
            ["labels", "predictions", "finetune_jobs", "samples", "readings", "model_versions", "users"], 0)
        assert repo.get_user(s, telegram_id=ALICE) is None
        assert repo.user_stats(s, telegram_id=ALICE).labelled == 0
    # Every table is back to what Bob alone had, except the update ids (not personal data).
    assert {k: v for k, v in after.items() if k != "processed_updates"} == {
        k: v for k, v in only_bob.items() if k != "processed_updates"}
    assert deleted == sum(only_bob[k] for k in only_bob if k != "processed_updates")
    assert not (tmp_path / "weights" / str(alice)).exists()
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(Reading).where(Reading.true_text.is_not(None))) == 1
        bob = repo.get_user(s, telegram_id=BOB)
        assert bob is not None and repo.active_model_version(s, user_id=bob.id) is not None
        assert len(repo.training_set(s, user_id=bob.id)) == 4
    with factory.begin() as s:
        assert repo.forget_user(s, telegram_id=ALICE) == 0  # forgetting twice is harmless
    factory.kw["bind"].dispose()


def test_forget_rolled_back_keeps_the_files(db_url: str, tmp_path: Path) -> None:
    factory = session_factory(db_url, weights_dir=tmp_path / "weights")
    alice = populate(factory, ALICE)
    try:
        with factory.begin() as s:
            repo.forget_user(s, telegram_id=ALICE)
            s.execute(text("SELECT no_such_column FROM users"))
    except Exception:
        pass
    with factory() as s:
        versions = repo.model_versions(s, user_id=alice)
        assert [repo.load_weights(s, user_id=alice, version_id=v.id) for v in versions] == [b"w1", b"w2"]
    factory.kw["bind"].dispose()
