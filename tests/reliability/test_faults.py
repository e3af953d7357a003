"""Faults: the database unavailable for a while or failing mid-transaction (the user is asked to try
again, nothing half-written, a redelivery is processed normally), the weights disk full or
unwritable (old model kept, no stray files, the job retried). The worker killed mid fine-tune and
Redis down are in tests/worker/test_faults.py; the bot killed and restarted is in
test_bot_restart.py and in bench/bench_reliability_load.py."""
# mypy: disable-error-code="index"

from __future__ import annotations

import asyncio
import copy
import errno
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

import storage.repository as repository_module
from core.model.network import Checkpoint, DigitNet
from core.recognize import Recognizer
from digitbot.settings import Settings
from digitbot.wiring import open_database, worker_config
from storage import repository as repo
from storage.models import ProcessedUpdate
from tests.bot.support import digits_photo, running_bot
from tests.reliability.support import buttons, expected, new_user_id, reading_id_of, stored_readings, wait_answer
from tests.worker.conftest import active_version, add_labelled, fake_trainer, job_rows, random_digits
from worker import jobs
from worker.scheduler import Sweeper

SORRY = "Sorry, something went wrong. Please try again."


def _processed_updates(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(ProcessedUpdate)) or 0)


def test_database_briefly_unavailable(tmp_path: Path, recognizer: Recognizer) -> None:
    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer) as h:
            user = new_user_id()
            await h.users.set_user(user, language_code="zh-hans")
            reply = await h.photo_reply(user, user, digits_photo("7"))
            rid = reading_id_of(reply)
            working = h.sessions.kw["bind"]
            h.sessions.configure(bind=create_engine(f"sqlite:///{tmp_path}/missing-dir/nothing.db"))
            try:
                sent = await h.users.send_photo(user, user, digits_photo("3"))
                sorry = await h.users.wait_for_bot_message(user, after=sent, timeout=30)
                assert sorry["text"] == expected("zh-hans", SORRY)
                query = await h.users.press_button(user, user, reply["message_id"], f"d:{rid}:0:1")
                alert = await wait_answer(h, query)
                assert alert["text"] == expected("zh-hans", SORRY) and alert["show_alert"]
            finally:
                h.sessions.configure(bind=working)
            assert stored_readings(h, user) == 1  # only the photo from before the outage
            with h.sessions() as session:
                view = repo.get_reading(session, telegram_id=user, reading_id=rid)
                assert view is not None and [d.label for d in view.digits] == [None]
            # Back up: the user tries again and everything works.
            again = await h.photo_reply(user, user, digits_photo("3"))
            assert buttons(again)
            answer = await h.press(user, user, reply["message_id"], f"d:{rid}:0:1")
            assert answer["text"] == expected("zh-hans", "Recorded: {digits}", digits="1")
            assert stored_readings(h, user) == 2
    asyncio.run(scenario())


def test_failure_mid_transaction_writes_nothing_and_redelivery_works(
        tmp_path: Path, recognizer: Recognizer, monkeypatch: pytest.MonkeyPatch) -> None:
    real_record = repository_module.record_reading

    def record_then_fail(session: Session, **kwargs: Any) -> Any:
        real_record(session, **kwargs)  # rows flushed inside the transaction...
        raise OperationalError("INSERT", {}, Exception("disk I/O error"))  # ...then the database fails

    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer) as h:
            user = new_user_id()
            await h.users.set_user(user, language_code="en")
            state = h.server.state
            chat = state.chat_for_user(user, user)
            message = state.add_message(chat, state.users[user], {"photo": state.files.add_photo(digits_photo("5"))})
            update = {"update_id": state.next_update_id, "message": copy.deepcopy(message)}
            state.next_update_id += 1
            before = _processed_updates(h.sessions)

            monkeypatch.setattr(repository_module, "record_reading", record_then_fail)
            state.updates.append(copy.deepcopy(update))
            state.changed()
            sorry = await h.users.wait_for_bot_message(user, after=message["message_id"], timeout=30)
            assert sorry["text"] == SORRY
            assert stored_readings(h, user) == 0  # the reading's rows were rolled back...
            assert _processed_updates(h.sessions) == before  # ...and so was the "update seen" marker

            monkeypatch.setattr(repository_module, "record_reading", real_record)
            state.updates.append(copy.deepcopy(update))  # Telegram delivers it again
            state.changed()
            reply = await h.users.wait_for_reply(user, message["message_id"], timeout=30)
            assert buttons(reply)
            assert stored_readings(h, user) >= 1
            assert _processed_updates(h.sessions) == before + 1
    asyncio.run(scenario())


# -- weights: disk full, directory unwritable -------------------------------------------------------
def _settings(tmp_path: Path, weights_dir: Path) -> Settings:
    return Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'digitbot.db'}", weights_dir=weights_dir,
                    finetune_min_labels=10, finetune_interval_s=3600, finetune_lease_s=30,
                    finetune_max_attempts=3, celery_broker_url=None, _env_file=None)  # type: ignore[call-arg]


def _run_jobs(settings: Settings, factory: sessionmaker[Session]) -> list[jobs.JobOutcome]:
    outcomes: list[jobs.JobOutcome] = []

    config = worker_config(settings)

    def dispatch(job_ids: Any) -> list[int]:
        for job_id in job_ids:
            outcomes.append(jobs.run_job(job_id, config=config, worker_id="test", session_factory=factory,
                                         base=Checkpoint(state_dict=DigitNet().state_dict()), device="cpu",
                                         trainer=fake_trainer()))
        return list(job_ids)
    Sweeper(config, session_factory=factory, dispatch=dispatch).sweep()
    return outcomes


def _weights_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.mark.parametrize("fault", ["disk_full", "unwritable"])
def test_weights_disk_full_or_unwritable_keeps_the_old_model(tmp_path: Path, fault: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    weights_dir = tmp_path / "weights"
    settings = _settings(tmp_path, weights_dir)
    factory = open_database(settings, upgrade=True)
    telegram_id = 4242
    add_labelled(factory, telegram_id, *random_digits(12, seed=1))
    assert [o.state for o in _run_jobs(settings, factory)] == ["promoted"]
    assert active_version(factory, telegram_id) == 1
    good_files = _weights_files(weights_dir)
    assert len(good_files) == 1
    with factory() as session:
        user = repo.get_user(session, telegram_id=telegram_id)
        assert user is not None
        active = repo.active_model_version(session, user_id=user.id)
        assert active is not None
        good_bytes = repo.load_weights(session, user_id=user.id, version_id=active.id)

    add_labelled(factory, telegram_id, *random_digits(12, seed=2))
    broken = settings
    if fault == "disk_full":
        def no_space(_fd: int) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr("storage.weights.os.fsync", no_space)  # the data hit a full disk
    else:
        blocker = tmp_path / "not-a-directory"
        blocker.write_bytes(b"")
        broken = _settings(tmp_path, blocker)
        factory.kw["info"]["weights_dir"] = blocker
    outcomes = _run_jobs(broken, factory)
    assert [o.state for o in outcomes] == ["retry"], outcomes
    factory.kw["info"]["weights_dir"] = weights_dir
    assert active_version(factory, telegram_id) == 1  # the old model is kept...
    assert _weights_files(weights_dir) == good_files  # ...its file intact, no partial or temp file left
    with factory() as session:
        user = repo.get_user(session, telegram_id=telegram_id)
        assert user is not None
        assert [v.version for v in repo.model_versions(session, user_id=user.id)] == [1]
        assert repo.load_weights(session, user_id=user.id, version_id=active.id) == good_bytes
    job = job_rows(factory, telegram_id)[-1]
    assert (job.state == "queued" and "No space" in (job.error or "")) or fault == "unwritable"

    monkeypatch.undo()  # the disk has room again: the retried job promotes version 2
    assert [o.state for o in _run_jobs(settings, factory)] == ["promoted"]
    assert active_version(factory, telegram_id) == 2
    assert len(_weights_files(weights_dir)) == 2
    factory.kw["bind"].dispose()
