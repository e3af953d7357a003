"""The durable update inbox (storage/repository/inbox.py), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from storage import repository as repo
from storage.models import InboxUpdate, ProcessedUpdate
from storage.repository.inbox import (
    GIVEN_UP,
    NEW,
    RETRY,
    Replay,
    inbox_clear,
    inbox_done,
    inbox_failed,
    inbox_forget_sender,
    inbox_heartbeat,
    inbox_link_reading,
    inbox_purge,
    inbox_reading,
    inbox_receive,
    inbox_states,
    inbox_take_over,
    inbox_take_pending,
)


def payload(update_id: int, text: str = "hi") -> dict[str, object]:
    return {"update_id": update_id, "message": {"message_id": 1, "date": 0, "text": text,
                                                "chat": {"id": 5, "type": "private"}}}


def receive(s: Session, update_id: int, owner: str = "a", text: str = "hi") -> str:
    return inbox_receive(s, update_id=update_id, payload=payload(update_id, text), owner=owner, max_attempts=3)


def test_receive_is_idempotent_and_reports_the_state(factory: sessionmaker[Session]) -> None:
    with factory.begin() as s:
        assert receive(s, 1) == NEW
    with factory.begin() as s:
        assert receive(s, 1, owner="b", text="other") == "pending"
        row = s.get(InboxUpdate, 1)
        assert row is not None and row.payload == payload(1) and row.owner == "a" and row.attempts == 0
    with factory.begin() as s:
        assert inbox_done(s, update_ids=[1, 99]) == 1
        assert inbox_done(s, update_ids=[1]) == 0  # already done
        assert inbox_done(s, update_ids=[]) == 0
    with factory.begin() as s:
        assert receive(s, 1) == "done"
        row = s.get(InboxUpdate, 1)
        assert row is not None and row.payload is None and row.finished_at is not None  # content dropped
        assert s.scalar(select(InboxUpdate.payload.is_(None)).where(InboxUpdate.update_id == 1))  # SQL NULL
        assert inbox_failed(s, update_id=1, max_attempts=3) is False  # a done update stays done


def test_a_failed_update_is_handled_again_when_redelivered_until_given_up(factory: sessionmaker[Session]) -> None:
    with factory.begin() as s:
        assert receive(s, 5) == NEW
    for attempt in (1, 2):
        with factory.begin() as s:
            assert inbox_failed(s, update_id=5, max_attempts=3) is False
            assert inbox_states(s, update_ids=[5]) == {5: "failed"}
        with factory.begin() as s:
            assert inbox_take_pending(s, owner=None, max_attempts=3).pending == []  # not replayed at start-up
            assert receive(s, 5, owner="b") == RETRY  # Telegram delivers it again: handled again
            row = s.get(InboxUpdate, 5)
            assert row is not None and (row.state, row.owner, row.attempts) == ("pending", "b", attempt)
    with factory.begin() as s:
        assert inbox_failed(s, update_id=5, max_attempts=3) is True  # the third failure: given up
    with factory.begin() as s:
        assert receive(s, 5) == GIVEN_UP
        assert inbox_states(s, update_ids=[5]) == {5: "failed"}


def test_take_pending_replays_unfinished_updates_in_order_and_gives_up_after_max(
        factory: sessionmaker[Session]) -> None:
    with factory.begin() as s:
        for update_id in (12, 10, 11):
            receive(s, update_id, owner="host-a")
        receive(s, 20, owner="host-b")
        inbox_done(s, update_ids=[11])
    for attempt in (1, 2):
        with factory.begin() as s:
            replay = inbox_take_pending(s, owner="host-a", max_attempts=3)
        assert [(p.update_id, p.attempts) for p in replay.pending] == [(10, attempt), (12, attempt)]
        assert replay.pending[0].payload == payload(10) and replay.given_up == []
    with factory.begin() as s:
        inbox_done(s, update_ids=[12])  # the second replay of 12 finished; 10 crashed the bot again
    with factory.begin() as s:
        replay = inbox_take_pending(s, owner="host-a", max_attempts=3)
    assert replay.pending == [] and replay.given_up == [10]  # its third handling did not finish either
    with factory.begin() as s:
        assert inbox_states(s, update_ids=[10, 11, 12, 20, 99]) == {
            10: "failed", 11: "done", 12: "done", 20: "pending"}  # host-b's update is left to host-b
        assert receive(s, 10, owner="host-a") == GIVEN_UP
        row = s.get(InboxUpdate, 10)
        assert row is not None and row.payload == payload(10)  # kept for an operator to look at
    with factory.begin() as s:
        assert inbox_take_pending(s, owner="host-a", max_attempts=3) == Replay([], [])
    with factory.begin() as s:  # long polling: one bot process, whatever its host was called
        assert [p.update_id for p in inbox_take_pending(s, owner=None, max_attempts=3).pending] == [20]


def test_link_reading(factory: sessionmaker[Session]) -> None:
    with factory.begin() as s:
        receive(s, 7)
        assert inbox_reading(s, update_id=7) is None
        inbox_link_reading(s, update_id=7, reading_id=42)
        inbox_link_reading(s, update_id=8, reading_id=43)  # not in the inbox (e.g. no inbox in use): nothing
    with factory() as s:
        assert inbox_reading(s, update_id=7) == 42
        assert inbox_reading(s, update_id=8) is None


def test_purge_deletes_finished_rows_only_and_clear_everything(factory: sessionmaker[Session]) -> None:
    with factory.begin() as s:
        for update_id in range(1, 6):
            receive(s, update_id)
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


def test_forget_clears_the_content_of_that_users_finished_updates(factory: sessionmaker[Session]) -> None:
    def press(update_id: int, sender: int) -> dict[str, object]:
        return {"update_id": update_id, "callback_query": {"id": "q", "data": "c:1", "chat_instance": "x",
                                                           "from": {"id": sender, "is_bot": False, "first_name": "A"}}}
    with factory.begin() as s:
        for update_id, sender in ((1, 77), (2, 88), (3, 77)):
            inbox_receive(s, update_id=update_id, payload=press(update_id, sender), owner="a", max_attempts=1)
        assert inbox_failed(s, update_id=1, max_attempts=1)  # given up on: its content is kept
        assert inbox_failed(s, update_id=2, max_attempts=1)
        # update 3 is still pending (being handled): left alone
    with factory.begin() as s:
        assert inbox_forget_sender(s, telegram_id=77) == 1
    with factory() as s:
        payloads = {row.update_id: row.payload for row in s.scalars(select(InboxUpdate))}
        assert payloads[1] is None
        assert payloads[2] == press(2, 88)
        assert payloads[3] == press(3, 77)


def _age(s: Session, update_id: int, days: float) -> None:
    """As if the update's inbox row and processed marker were written ``days`` ago."""
    then = datetime.now(UTC) - timedelta(days=days)
    row = s.get(InboxUpdate, update_id)
    if row is not None:
        row.received_at = then
        row.finished_at = then if row.state != "pending" else None
    marker = s.get(ProcessedUpdate, update_id)
    if marker is not None:
        marker.processed_at = then


def test_update_markers_are_pruned_except_those_of_pending_updates(factory: sessionmaker[Session]) -> None:
    with factory.begin() as s:
        for update_id in (1, 2, 3):
            assert repo.mark_update_processed(s, update_id=update_id)
        receive(s, 3)  # still pending: its process died after storing it, to be replayed
        for update_id in (1, 2, 3):
            _age(s, update_id, days=2)
        assert repo.mark_update_processed(s, update_id=4)
    with factory.begin() as s:
        assert repo.prune_processed_updates(s, older_than=datetime.now(UTC) - timedelta(days=1)) == 2
        assert set(s.scalars(select(ProcessedUpdate.update_id))) == {3, 4}


def test_an_update_id_reused_after_the_retention_is_a_new_update(factory: sessionmaker[Session]) -> None:
    """Telegram picks update ids at random again after a week without updates: an id whose records are
    older than the retention is a new update (processed), one inside it a redelivery (dropped)."""
    def stale() -> datetime:
        return datetime.now(UTC) - timedelta(days=1)

    with factory.begin() as s:
        assert receive(s, 7) == NEW
        assert repo.mark_update_processed(s, update_id=7, stale_before=stale())
        inbox_done(s, update_ids=[7])
    with factory.begin() as s:  # a true redelivery: dropped by the inbox and by the marker
        assert inbox_receive(s, update_id=7, payload=payload(7), owner="a", max_attempts=3,
                             stale_before=stale()) == "done"
        assert not repo.mark_update_processed(s, update_id=7, stale_before=stale())
        _age(s, 7, days=8)
    with factory.begin() as s:  # a week later, the same id on a new message: handled
        assert inbox_receive(s, update_id=7, payload=payload(7, "new"), owner="b", max_attempts=3,
                             stale_before=stale()) == NEW
        row = s.get(InboxUpdate, 7)
        assert row is not None and (row.state, row.owner, row.attempts, row.finished_at) == ("pending", "b", 0, None)
        assert row.payload is not None and row.payload["message"]["text"] == "new"
        assert repo.mark_update_processed(s, update_id=7, stale_before=stale())
    with factory.begin() as s:  # ...and its own redelivery is dropped again
        assert not repo.mark_update_processed(s, update_id=7, stale_before=stale())
        # handled without the inbox (the database was down for it): the old marker alone is taken over
        assert repo.mark_update_processed(s, update_id=8)
        _age(s, 8, days=8)
        assert repo.mark_update_processed(s, update_id=8, stale_before=stale())
        assert not repo.mark_update_processed(s, update_id=8, stale_before=stale())


def test_a_replay_after_a_long_stop_is_still_a_duplicate(factory: sessionmaker[Session]) -> None:
    """The process died after storing the update (marker written) and the bot stayed down for days:
    the replay of the pending update must not store it again."""
    with factory.begin() as s:
        assert receive(s, 9) == NEW
        assert repo.mark_update_processed(s, update_id=9)
        _age(s, 9, days=3)
    with factory.begin() as s:
        stale = datetime.now(UTC) - timedelta(days=1)
        assert not repo.mark_update_processed(s, update_id=9, stale_before=stale)
        assert repo.prune_processed_updates(s, older_than=stale) == 0


def _lease_lapses(s: Session, update_id: int, seconds: float) -> None:
    row = s.get(InboxUpdate, update_id)
    assert row is not None and row.claimed_at is not None
    row.claimed_at -= timedelta(seconds=seconds)


def test_a_pending_update_whose_lease_expired_is_taken_over_once(factory: sessionmaker[Session]) -> None:
    """Webhook replicas lease what they take: host-a is gone (killed, or replaced under another name),
    its pending update is taken over by host-b once its lease is not renewed, never while it is."""
    lease = timedelta(seconds=60)

    def take_over(owner: str) -> Replay:
        with factory.begin() as s:
            return inbox_take_over(s, owner=owner, lease_before=datetime.now(UTC) - lease, max_attempts=3)

    with factory.begin() as s:
        receive(s, 1, owner="host-a")
        receive(s, 2, owner="host-a")
        inbox_done(s, update_ids=[2])
    assert take_over("host-b") == Replay([], [])  # host-a's lease is fresh
    with factory.begin() as s:
        _lease_lapses(s, 1, 50)
        assert inbox_heartbeat(s, owner="host-a", update_ids=[1, 2]) == 1  # host-a still beats: renewed
        _lease_lapses(s, 1, 50)
    assert take_over("host-b") == Replay([], [])
    with factory.begin() as s:
        _lease_lapses(s, 1, 61)  # host-a stopped beating
    replay = take_over("host-b")
    assert [(p.update_id, p.attempts, p.payload) for p in replay.pending] == [(1, 1, payload(1))]
    assert take_over("host-c") == Replay([], [])  # host-b holds it now, with a fresh lease
    with factory.begin() as s:
        row = s.get(InboxUpdate, 1)
        assert row is not None and (row.owner, row.state) == ("host-b", "pending")
        assert inbox_heartbeat(s, owner="host-a", update_ids=[1]) == 0  # no longer host-a's
        assert inbox_heartbeat(s, owner="host-b", update_ids=[1]) == 1
        assert receive(s, 1, owner="host-a") == "pending"
    for owner, attempts in (("host-c", 2), ("host-d", 3)):  # a poison update kills every replica
        with factory.begin() as s:
            _lease_lapses(s, 1, 61)
        replay = take_over(owner)
        if attempts < 3:
            assert [(p.update_id, p.attempts) for p in replay.pending] == [(1, attempts)]
        else:
            assert replay == Replay([], [1])
    with factory.begin() as s:
        assert inbox_states(s, update_ids=[1]) == {1: "failed"}
        receive(s, 3, owner="host-a")
        _lease_lapses(s, 3, 61)
        receive(s, 4, owner="host-a")
        _lease_lapses(s, 4, 61)
        replay = inbox_take_over(s, owner="host-b", lease_before=datetime.now(UTC) - lease, max_attempts=3,
                                 update_ids=[4])  # Telegram delivered 4 again to host-b
    assert [p.update_id for p in replay.pending] == [4] and take_over("host-c").pending[0].update_id == 3


def test_a_start_up_takes_its_own_pending_updates_with_a_fresh_lease(factory: sessionmaker[Session]) -> None:
    with factory.begin() as s:
        receive(s, 1, owner="host-a")
        _lease_lapses(s, 1, 3600)
    with factory.begin() as s:
        assert [p.update_id for p in inbox_take_pending(s, owner="host-a", max_attempts=3).pending] == [1]
        assert inbox_take_over(s, owner="host-b", lease_before=datetime.now(UTC) - timedelta(seconds=60),
                               max_attempts=3) == Replay([], [])


def test_migration_0006_backfills_the_lease_of_pending_updates(db_url: str) -> None:
    from sqlalchemy import create_engine, inspect

    from storage.db import downgrade, upgrade_to_head

    factory = sessionmaker(create_engine(db_url))
    try:
        with factory.begin() as s:
            receive(s, 1)
            receive(s, 2)
            inbox_done(s, update_ids=[2])
        downgrade(db_url, "0005")
        with factory() as s:
            assert "claimed_at" not in {c["name"] for c in inspect(s.connection()).get_columns("update_inbox")}
        upgrade_to_head(db_url)
        with factory() as s:
            rows = {row.update_id: row for row in s.scalars(select(InboxUpdate))}
            assert rows[1].claimed_at == rows[1].received_at and rows[2].claimed_at is None
    finally:
        factory.kw["bind"].dispose()
