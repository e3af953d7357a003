"""Property: the users-due counter always equals a brute-force count of the user's current labels
created since the last fine-tune run started, whatever mix of labels, relabels, undos and runs."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import repository as repo
from storage.db import session_factory, upgrade_to_head
from storage.models import User
from tests.storage.conftest import digits

# (operation, position, digit): label a digit, undo a digit's label, or run a fine-tune job.
operations = st.lists(
    st.tuples(st.sampled_from(["label", "label", "undo", "run"]), st.integers(0, 3), st.integers(0, 9)),
    max_size=25,
)
_DIR = Path(tempfile.mkdtemp(prefix="due-counter-"))
_URL = f"sqlite:///{_DIR / 'due.db'}"
_telegram_ids = itertools.count(1)
_migrated = False


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_due_counter_matches_brute_force(ops: list[tuple[str, int, int]]) -> None:
    global _migrated
    if not _migrated:
        upgrade_to_head(_URL)
        _migrated = True
    factory = session_factory(_URL)
    telegram_id = next(_telegram_ids)
    with factory.begin() as s:
        rec = repo.record_reading(s, telegram_id=telegram_id, chat_id=1, file_id="F", file_unique_id="U",
                                  digits=digits("1234"))
    for op, position, digit in ops:
        with factory.begin() as s:
            if op == "label":
                repo.label_sample(s, telegram_id=telegram_id, reading_id=rec.reading_id, position=position,
                                  digit=digit)
            elif op == "undo":
                repo.undo_label(s, telegram_id=telegram_id, reading_id=rec.reading_id, position=position)
            else:
                job = repo.create_finetune_job(s, user_id=rec.user_id)
                assert job is not None
                repo.claim_job(s, job_id=job.id)
                repo.finish_job(s, job_id=job.id, metrics={}, outcome="skipped")
        with factory() as s:
            user = s.get(User, rec.user_id)
            assert user is not None
            expected = repo.current_label_count(s, user_id=user.id, since=user.finetune_started_at)
            assert user.labels_since_finetune == expected
            due = repo.users_due_for_finetune(s, min_labels=1, limit=100_000)
            assert (user.id in due) == (expected >= 1)
    factory.kw["bind"].dispose()
