from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from storage import repository as repo
from storage.repository.service import service_counts
from tests.storage.conftest import digits


def test_service_counts(factory: sessionmaker[Session]) -> None:
    with factory.begin() as s:
        assert service_counts(s)["users"] == 0
        rec = repo.record_reading(s, telegram_id=1, chat_id=1, file_id="F", file_unique_id="U",
                                  digits=digits("12"))
        repo.label_sample(s, telegram_id=1, reading_id=rec.reading_id, position=0, digit=7)
        repo.label_sample(s, telegram_id=1, reading_id=rec.reading_id, position=0, digit=1)
        version = repo.add_model_version(s, user_id=rec.user_id, parent_id=None, weights=b"w", metrics={})
        repo.promote_model_version(s, user_id=rec.user_id, version_id=version.id)
        repo.create_finetune_job(s, user_id=rec.user_id)
        repo.get_or_create_user(s, telegram_id=2)
    with factory() as s:
        counts = service_counts(s)
    assert counts == {"users": 2, "readings": 1, "samples": 2, "labels": 1, "label_rows": 2,
                      "active_models": 1, "jobs_queued": 1, "jobs_running": 0, "jobs_succeeded": 0,
                      "jobs_failed": 0}
