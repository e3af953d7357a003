"""The durable update inbox (bot/inbox.py) in transactions; sync, called in threads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from bot.inbox import RETENTION
from bot.services.base import ServicesBase, stale_before
from storage import repository as repo
from storage.repository import inbox as inbox_repo


class InboxServices(ServicesBase):
    # update ids replayed from the inbox at start-up, until done (a photo stored but never answered
    # is answered from the stored reading; see ReadingServices.read_photo)
    replayed: set[int]

    def forget_update_markers(self) -> int:
        """Drop every processed-update marker: for a fresh local emulator, whose update ids start over
        and which cannot redeliver anything from before it started."""
        with self.sessions.begin() as session:
            inbox_repo.inbox_clear(session)
            return repo.prune_processed_updates(session, older_than=datetime.now(UTC) + timedelta(days=1))

    def inbox_receive(self, update_id: int, payload: dict[str, Any], owner: str, max_attempts: int,
                      retention: timedelta = RETENTION) -> str:
        with self.sessions.begin() as session:
            return inbox_repo.inbox_receive(session, update_id=update_id, payload=payload, owner=owner,
                                            max_attempts=max_attempts, stale_before=stale_before(retention))

    def inbox_take_pending(self, owner: str | None, max_attempts: int) -> inbox_repo.Replay:
        with self.sessions.begin() as session:
            return inbox_repo.inbox_take_pending(session, owner=owner, max_attempts=max_attempts)

    def inbox_done(self, update_id: int) -> int:
        self.replayed.discard(update_id)
        with self.sessions.begin() as session:
            return inbox_repo.inbox_done(session, update_ids=[update_id])

    def inbox_failed(self, update_id: int, max_attempts: int) -> bool:
        self.replayed.discard(update_id)
        with self.sessions.begin() as session:
            return inbox_repo.inbox_failed(session, update_id=update_id, max_attempts=max_attempts)

    def inbox_purge(self, retention: timedelta) -> int:
        """Delete finished inbox rows and processed-update markers older than ``retention`` (the
        markers of updates still pending stay); returns how many inbox rows."""
        with self.sessions.begin() as session:
            removed = inbox_repo.inbox_purge(session, finished_before=datetime.now(UTC) - retention)
            repo.prune_processed_updates(session, older_than=stale_before(retention))
            return removed

    def note_replayed(self, update_id: int) -> None:
        """This update is handled again after a crash: a photo already stored but never answered is
        answered from the stored reading."""
        self.replayed.add(update_id)
