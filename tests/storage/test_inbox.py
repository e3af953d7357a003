"""The durable update inbox (storage/repository/inbox.py), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from storage.models import InboxUpdate
from storage.repository.inbox import (
    NEW,
    inbox_clear,
    inbox_done,
    inbox_link_reading,
    inbox_purge,
    inbox_reading,
    inbox_receive,
    inbox_states,
    inbox_take_pending,
)


def payload(update_id: int, text: str = "hi") -> dict[str, object]:
    return {"update_id": update_id, "message": {"message_id": 1, "date": 0, "text": text,
                                                "chat": {"id": 5, "type": "private"}}}


def test_receive_is_idempotent_and_reports_the_state(factory: sessionmaker[Session]) -> None:
    with factory.begin() as s:
        assert inbox_receive(s, update_id=1, payload=payload(1), owner="a") == NEW
    with factory.begin() as s:
        assert inbox_receive(s, update_id=1, payload=payload(1, "other"), owner="b") == "pending"
        row = s.get(InboxUpdate, 1)
        assert row is not None and row.payload == payload(1) and row.owner == "a" and row.attempts == 0
    with factory.begin() as s:
        assert inbox_done(s, update_ids=[1, 99]) == 1
        assert inbox_done(s, update_ids=[1]) == 0  # already done
        assert inbox_done(s, update_ids=[]) == 0
    with factory.begin() as s:
        assert inbox_receive(s, update_id=1, payload=payload(1), owner="a") == "done"
        row = s.get(InboxUpdate, 1)
        assert row is not None and row.payload is None and row.finished_at is not None  # content dropped
        assert s.scalar(select(InboxUpdate.payload.is_(None)).where(InboxUpdate.update_id == 1))  # SQL NULL


def test_take_pending_replays_own_unfinished_updates_in_order_and_gives_up_after_max(
        factory: sessionmaker[Session]) -> None:
    with factory.begin() as s:
        for update_id in (12, 10, 11):
            inbox_receive(s, update_id=update_id, payload=payload(update_id), owner="host-a")
        inbox_receive(s, update_id=20, payload=payload(20), owner="host-b")
        inbox_done(s, update_ids=[11])
    for attempt in (1, 2, 3):
        with factory.begin() as s:
            replay = inbox_take_pending(s, owner="host-a", max_attempts=3)
        assert [(p.update_id, p.attempts) for p in replay.pending] == [(10, attempt), (12, attempt)]
        assert replay.pending[0].payload == payload(10) and replay.given_up == []
    with factory.begin() as s:
        inbox_done(s, update_ids=[12])  # the third replay of 12 finished; 10 crashed the bot again
    with factory.begin() as s:
        replay = inbox_take_pending(s, owner="host-a", max_attempts=3)
    assert replay.pending == [] and replay.given_up == [10]
    with factory.begin() as s:
        assert inbox_states(s, update_ids=[10, 11, 12, 20, 99]) == {
            10: "failed", 11: "done", 12: "done", 20: "pending"}  # host-b's update is left to host-b
        assert inbox_receive(s, update_id=10, payload=payload(10), owner="host-a") == "failed"
        row = s.get(InboxUpdate, 10)
        assert row is not None and row.payload == payload(10)  # kept for an operator to look at
    with factory.begin() as s:
        assert inbox_take_pending(s, owner="host-a", max_attempts=3) == type(replay)([], [])


def test_link_reading(factory: sessionmaker[Session]) -> None:
    with factory.begin() as s:
        inbox_receive(s, update_id=7, payload=payload(7), owner="a")
        assert inbox_reading(s, update_id=7) is None
        inbox_link_reading(s, update_id=7, reading_id=42)
        inbox_link_reading(s, update_id=8, reading_id=43)  # not in the inbox (e.g. no inbox in use): nothing
    with factory() as s:
        assert inbox_reading(s, update_id=7) == 42
        assert inbox_reading(s, update_id=8) is None


def test_purge_deletes_finished_rows_only_and_clear_everything(factory: sessionmaker[Session]) -> None:
    with factory.begin() as s:
        for update_id in range(1, 6):
            inbox_receive(s, update_id=update_id, payload=payload(update_id), owner="a")
        inbox_done(s, update_ids=[1, 2])
        s.get(InboxUpdate, 3).attempts = 5  # type: ignore[union-attr]
    with factory.begin() as s:
        assert inbox_take_pending(s, owner="a", max_attempts=5).given_up == [3]
        s.get(InboxUpdate, 1).finished_at = datetime.now(UTC) - timedelta(days=2)  # type: ignore[union-attr]
    with factory.begin() as s:
        assert inbox_purge(s, finished_before=datetime.now(UTC) - timedelta(days=1)) == 1
        assert set(inbox_states(s, update_ids=range(1, 6))) == {2, 3, 4, 5}
    with factory.begin() as s:
        assert inbox_purge(s, finished_before=datetime.now(UTC) + timedelta(seconds=1)) == 2  # 2 and 3
        assert inbox_states(s, update_ids=range(1, 6)) == {4: "pending", 5: "pending"}  # pending is kept
    with factory.begin() as s:
        assert inbox_clear(s) == 2
        assert inbox_states(s, update_ids=range(1, 6)) == {}


def test_migration_0003_down_and_up_again(db_url: str) -> None:
    from sqlalchemy import create_engine, inspect

    from storage.db import downgrade, upgrade_to_head

    engine = create_engine(db_url)
    try:
        assert "update_inbox" in inspect(engine).get_table_names()
        downgrade(db_url, "0002")
        names = set(inspect(engine).get_table_names())
        assert "update_inbox" not in names and {"users", "readings", "processed_updates"} <= names
        upgrade_to_head(db_url)
        assert "update_inbox" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
