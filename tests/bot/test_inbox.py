"""The durable update inbox (bot/inbox.py) in the live bot: updates are written down before they are
acknowledged and marked done once handled; a start-up replay answers what a dead process left
pending exactly once, also when Telegram delivers the same update again; a photo stored but never
answered is answered from its reading; a poison update is given up on. The process-kill version is
tests/reliability/test_bot_restart.py (slow)."""
# mypy: disable-error-code="index"

from __future__ import annotations

import asyncio
import copy
import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from telegram import Update

from bot.app import INBOX_KEY
from bot.inbox import UpdateInbox
from core.recognize import Recognizer
from storage import repository as repo
from storage.models import InboxUpdate, ProcessedUpdate
from storage.repository.inbox import inbox_states
from storage.repository.service import service_counts
from tests.bot.support import BotHarness, digits_photo, running_bot

ANN = 4242


def _inbox(h: BotHarness) -> UpdateInbox:
    inbox: UpdateInbox = h.application.bot_data[INBOX_KEY]
    return inbox


def _photo_update(h: BotHarness, text: str) -> dict[str, Any]:
    """A photo message the user sent, as the update Telegram would deliver (not queued anywhere)."""
    state = h.server.state
    chat = state.chat_for_user(ANN, ANN)
    message = state.add_message(chat, state.users[ANN], {"photo": state.files.add_photo(digits_photo(text))})
    update = {"update_id": state.next_update_id, "message": copy.deepcopy(message)}
    state.next_update_id += 1
    return update


def _deliver(h: BotHarness, update: dict[str, Any]) -> None:
    h.server.state.updates.append(copy.deepcopy(update))
    h.server.state.changed()


async def _replies(h: BotHarness, message_id: int) -> int:
    messages = await h.users.messages(ANN)
    return sum(1 for m in messages if m["from"]["is_bot"] and m.get("reply_to_message", {}).get("message_id")
               == message_id)


def _left_pending(h: BotHarness, update: dict[str, Any], attempts: int = 0) -> None:
    """As a process killed while handling it leaves it: written down, pending."""
    assert h.services.inbox_receive(update["update_id"], update, "dead-host", 3) == "new"
    with h.sessions.begin() as session:
        row = session.get(InboxUpdate, update["update_id"])
        assert row is not None
        row.attempts = attempts


def test_updates_are_written_down_and_marked_done(tmp_path: Path, recognizer: Recognizer) -> None:
    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer) as h:
            await h.users.set_user(ANN, language_code="en")
            reply = await h.photo_reply(ANN, ANN, digits_photo("5"))
            await h.command_reply(ANN, ANN, "help")
            await asyncio.sleep(0.3)
            with h.sessions() as session:
                rows = session.query(InboxUpdate).all()
                assert [r.state for r in rows] == ["done", "done"] and all(r.payload is None for r in rows)
                assert rows[0].reading_id is not None and rows[0].reading_id == int(
                    reply["reply_markup"]["inline_keyboard"][0][0]["callback_data"].split(":")[1])
            # Telegram delivering a handled update again (its acknowledgement lost): not handled again.
            help_update = {"update_id": rows[1].update_id, "message": next(
                m for m in await h.users.messages(ANN) if m.get("text") == "/help")}
            before = len(await h.users.messages(ANN))
            _deliver(h, help_update)
            await h.users.wait_until_polled()
            await asyncio.sleep(0.5)
            assert len(await h.users.messages(ANN)) == before
    asyncio.run(scenario())


def test_replay_answers_a_pending_photo_once_even_when_telegram_delivers_it_again(
        tmp_path: Path, recognizer: Recognizer) -> None:
    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer) as h:
            await h.users.set_user(ANN, language_code="en")
            first, second = _photo_update(h, "3"), _photo_update(h, "8")
            for update in (first, second):
                _left_pending(h, update)
            assert await _inbox(h).replay(h.application.bot) == 2
            _deliver(h, first)  # never acknowledged before the crash: Telegram sends it again meanwhile
            for update in (first, second):
                await h.users.wait_for_reply(ANN, update["message"]["message_id"], timeout=20)
            _deliver(h, second)  # and this one after it was handled
            await h.users.wait_until_polled()
            await asyncio.sleep(0.5)
            for update in (first, second):
                assert await _replies(h, update["message"]["message_id"]) == 1
            with h.sessions() as session:
                assert service_counts(session)["readings"] == 2
                assert inbox_states(session, update_ids=[first["update_id"], second["update_id"]]) == {
                    first["update_id"]: "done", second["update_id"]: "done"}
    asyncio.run(scenario())


def test_replay_answers_a_photo_stored_before_the_crash_from_its_reading(
        tmp_path: Path, recognizer: Recognizer) -> None:
    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer) as h:
            await h.users.set_user(ANN, language_code="en")
            update = _photo_update(h, "42")
            _left_pending(h, update)
            message = update["message"]
            photo = message["photo"][-1]
            data = await h.users.download(photo["file_id"])
            # the dead process had read and stored it, and was killed before replying
            stored = await h.services.read_photo(update_id=update["update_id"], telegram_id=ANN, chat_id=ANN,
                                                 file_id=photo["file_id"], file_unique_id=photo["file_unique_id"],
                                                 data=data)
            assert stored.status == "ok" and stored.card is not None
            # a redelivery racing the first handling (not a replay) stays silent
            again = await h.services.read_photo(update_id=update["update_id"], telegram_id=ANN, chat_id=ANN,
                                                file_id=photo["file_id"], file_unique_id=photo["file_unique_id"],
                                                data=data)
            assert again.status == "duplicate"
            await _inbox(h).replay(h.application.bot)
            reply = await h.users.wait_for_reply(ANN, message["message_id"], timeout=20)
            assert reply["reply_markup"]["inline_keyboard"][0][0]["callback_data"].split(":")[1] == str(
                stored.card.reading_id)
            await asyncio.sleep(0.5)
            assert await _replies(h, message["message_id"]) == 1
            with h.sessions() as session:
                assert service_counts(session)["readings"] == 1
                view = repo.get_reading(session, telegram_id=ANN, reading_id=stored.card.reading_id)
                assert view is not None and view.bot_message_id == reply["message_id"]
    asyncio.run(scenario())


def test_a_poison_update_is_given_up_on(tmp_path: Path, recognizer: Recognizer,
                                        caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer) as h:
            await h.users.set_user(ANN, language_code="en")
            poison, fine = _photo_update(h, "1"), _photo_update(h, "2")
            _left_pending(h, poison, attempts=2)  # two handlings already died with it: this was the third
            _left_pending(h, fine, attempts=1)
            with caplog.at_level(logging.ERROR, logger="bot.inbox"):
                assert await _inbox(h).replay(h.application.bot) == 1
            assert f"giving up on update {poison['update_id']}" in caplog.text
            await h.users.wait_for_reply(ANN, fine["message"]["message_id"], timeout=20)
            _deliver(h, poison)  # delivered again: still not handled
            await h.users.wait_until_polled()
            await asyncio.sleep(0.5)
            assert await _replies(h, poison["message"]["message_id"]) == 0
            with h.sessions() as session:
                assert inbox_states(session, update_ids=[poison["update_id"], fine["update_id"]]) == {
                    poison["update_id"]: "failed", fine["update_id"]: "done"}
    asyncio.run(scenario())


@pytest.mark.parametrize("webhook", [False, True], ids=["polling", "webhook"])
def test_an_update_is_written_down_before_it_is_acknowledged(tmp_path: Path, recognizer: Recognizer,
                                                             webhook: bool) -> None:
    """Long polling: the next getUpdates (which confirms it) waits; webhook: the 200 waits."""
    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer, webhook=webhook) as h:
            inbox = _inbox(h)
            # replicas (webhook) replay only what they took themselves; one poller replays everything
            assert inbox.replay_owner == (inbox.owner if webhook else None)
            await h.users.set_user(ANN, language_code="en")
            release, entered = threading.Event(), threading.Event()
            receive = h.services.inbox_receive

            def slow_receive(*args: Any) -> str:
                entered.set()
                release.wait(30)
                return receive(*args)
            h.services.inbox_receive = slow_receive  # type: ignore[method-assign, assignment]
            sent = await h.users.send_photo(ANN, ANN, digits_photo("6"))
            assert await asyncio.to_thread(entered.wait, 20)
            await asyncio.sleep(0.5)
            assert (await h.users.info())["pending_updates"] == 1  # not acknowledged: Telegram would resend it
            release.set()
            await h.users.wait_for_reply(ANN, sent, timeout=20)
            assert (await h.users.info())["pending_updates"] == 0
            await asyncio.sleep(0.3)
            with h.sessions() as session:
                rows = session.query(InboxUpdate).all()
                assert [(r.state, r.owner) for r in rows] == [("done", inbox.owner)] and rows[0].reading_id
    asyncio.run(scenario())


def test_without_a_database_updates_are_handled_unrecorded_and_not_held_back() -> None:
    class DownServices:
        calls = 0

        def inbox_receive(self, *args: Any) -> str:
            self.calls += 1
            raise ConnectionError("database unreachable")

        inbox_done = inbox_failed = inbox_purge = inbox_receive

    services = DownServices()
    inbox = UpdateInbox(services)  # type: ignore[arg-type]

    async def scenario() -> None:
        first, second = Update(update_id=1), Update(update_id=2)
        await inbox.queue.put(first)
        await inbox.queue.put(second)
        await inbox.queue.put(Update(update_id=2))  # a redelivery while it is in hand: dropped
        assert inbox.queue.qsize() == 2
        assert services.calls == 1  # the second did not wait for the database again
        await inbox.finished(1)  # nothing in the database to mark: no call
        assert services.calls == 1
    asyncio.run(scenario())


def test_an_update_id_telegram_reuses_after_a_week_is_answered(tmp_path: Path, recognizer: Recognizer) -> None:
    """Telegram picks update ids at random again after a week without updates: a new photo whose id
    an old, handled photo had is read and answered (the old inbox row and marker are stale), and
    the purge drops stale processed-update markers along with the inbox rows."""
    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer) as h:
            await h.users.set_user(ANN, language_code="en")
            old = _photo_update(h, "3")
            _deliver(h, old)
            await h.users.wait_for_reply(ANN, old["message"]["message_id"], timeout=20)
            await asyncio.sleep(0.3)
            inbox = _inbox(h)
            await inbox.queue.put(Update.de_json(copy.deepcopy(old), h.application.bot))  # a redelivery
            assert inbox.queue.qsize() == 0
            week_ago = datetime.now(UTC) - timedelta(days=8)
            with h.sessions.begin() as session:
                row = session.get(InboxUpdate, old["update_id"])
                marker = session.get(ProcessedUpdate, old["update_id"])
                assert row is not None and row.state == "done" and marker is not None
                row.received_at = row.finished_at = marker.processed_at = week_ago
            new = _photo_update(h, "8")
            new["update_id"] = old["update_id"]
            await inbox.queue.put(Update.de_json(copy.deepcopy(new), h.application.bot))
            await h.users.wait_for_reply(ANN, new["message"]["message_id"], timeout=20)
            await asyncio.sleep(0.3)
            with h.sessions.begin() as session:
                assert service_counts(session)["readings"] == 2
                assert inbox_states(session, update_ids=[old["update_id"]]) == {old["update_id"]: "done"}
                session.add(ProcessedUpdate(update_id=1, processed_at=week_ago))
            assert await asyncio.to_thread(h.services.inbox_purge, inbox.retention) == 0
            with h.sessions() as session:
                assert session.get(ProcessedUpdate, 1) is None  # stale: purged
                assert session.get(ProcessedUpdate, old["update_id"]) is not None  # the new photo's: kept
    asyncio.run(scenario())
