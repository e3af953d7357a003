"""A webhook replica killed (SIGKILL) while it handles an update, never to come back under its name:
the surviving replica takes the stranded update over once the dead one's lease expires, not while
it still renews it, and handles it exactly once (bot/inbox.py, storage/repository/inbox.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from telegram import Update

from bot.inbox import UpdateInbox
from bot.services import BotServices
from digitbot.settings import PROJECT_ROOT
from storage.db import session_factory, upgrade_to_head
from storage.models import InboxUpdate
from tests.storage.conftest import BACKENDS, new_postgres_schema_url

LEASE_S = 1.0
UPDATE_ID = 5150


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'replicas.db'}"
        upgrade_to_head(url)
        yield url
        return
    url, drop = new_postgres_schema_url()
    upgrade_to_head(url)
    try:
        yield url
    finally:
        drop()


def _wait_for(path: Path, child: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert child.poll() is None, child.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "the replica did not take the update"
        time.sleep(0.05)


def test_a_killed_replicas_update_is_taken_over_by_the_survivor_exactly_once(db_url: str, tmp_path: Path) -> None:
    marker = tmp_path / "handling"
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.inbox_replica", db_url, "replica-a", str(UPDATE_ID),
         str(LEASE_S), str(marker)], cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sessions = session_factory(db_url)
    services = BotServices(sessions=sessions, recognizer=None)  # type: ignore[arg-type]
    survivor = UpdateInbox(services, webhook=True, owner="replica-b", lease=timedelta(seconds=LEASE_S))
    try:
        _wait_for(marker, child)

        async def scenario() -> None:
            # replica-a is alive and renews its lease: nothing to take over, however long it takes
            for _ in range(6):
                await asyncio.sleep(LEASE_S / 2)
                assert await survivor.keep_leases(None) == 0
            os.kill(child.pid, signal.SIGKILL)
            child.wait(30)
            taken = 0
            deadline = time.monotonic() + 30 * LEASE_S
            while not taken:
                assert time.monotonic() < deadline, "the stranded update was never taken over"
                await asyncio.sleep(LEASE_S / 3)
                taken = await survivor.keep_leases(None)
            assert taken == 1 and survivor.queue.qsize() == 1
            update = survivor.queue.get_nowait()
            assert isinstance(update, Update) and update.update_id == UPDATE_ID
            # while the survivor handles it (longer than a lease), its heartbeat keeps it its own
            for _ in range(6):
                await asyncio.sleep(LEASE_S / 2)
                assert await survivor.keep_leases(None) == 0
            # a second survivor sees nothing to take either
            other = UpdateInbox(services, webhook=True, owner="replica-c", lease=timedelta(seconds=LEASE_S))
            assert await other.keep_leases(None) == 0
            await survivor.finished(UPDATE_ID)
            await asyncio.sleep(LEASE_S * 1.5)
            assert await survivor.keep_leases(None) == 0 and await other.keep_leases(None) == 0
            assert survivor.queue.qsize() == 0 and other.queue.qsize() == 0

        asyncio.run(scenario())
        with sessions() as session:
            row = session.get(InboxUpdate, UPDATE_ID)
            assert row is not None and (row.state, row.owner, row.attempts) == ("done", "replica-b", 1)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
        services.close()
        sessions.kw["bind"].dispose()
