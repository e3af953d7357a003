"""PostgreSQL restarted while users are labelling (issue 13 item 4; slow, needs DIGITBOT_TEST_POSTGRES_URL).

The bot (real Application + emulator) runs on a private PostgreSQL cluster that the test creates with
initdb on a free port, so that restarting it (`pg_ctl restart -m fast`, what `pg_ctlcluster ...
restart` does) cannot break the tests running beside it on the shared server. Several users send
photos of digit rows and label every digit with the digit buttons, as fast as a person taps, while
the server restarts under them. A user told "try again" presses again, as a person would. Afterwards
every label a user was told was recorded is stored once, and nothing is lost; a press sent after the
server is back never fails (the pool replaces its dead connections: ``pool_pre_ping``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.pool import NullPool

from core.recognize import Recognizer
from storage import repository as repo
from storage.db import session_factory, upgrade_to_head
from storage.models import Label
from tests.bot.support import BotHarness, digits_photo, running_bot
from tests.reliability.support import buttons, new_user_id, reading_id_of, wait_answer

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
SORRY = "Sorry, something went wrong. Please try again."
USERS, PHOTOS = 4, 4
ROWS = ["4271", "3859", "6014", "7725"]
TAP_EVERY_S = 0.12


def _postgres_bin() -> Path:
    if not os.environ.get("DIGITBOT_TEST_POSTGRES_URL"):
        pytest.skip("DIGITBOT_TEST_POSTGRES_URL not set (eval \"$(bash scripts/services.sh)\")")
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb is None:
        pytest.skip("initdb/pg_ctl not found: this test restarts a private PostgreSQL cluster of its own")
    return Path(initdb).parent


class PrivateCluster:
    """A throwaway PostgreSQL cluster (initdb) on a free loopback port. As root, the server runs as
    the `postgres` user (PostgreSQL refuses to run as root)."""

    def __init__(self) -> None:
        self.bin = _postgres_bin()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                pytest.skip("running as root without runuser: cannot start a private PostgreSQL as `postgres`")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.dir = Path(tempfile.mkdtemp(prefix="digitbot-pg-"))
        if self.as_user:
            shutil.chown(self.dir, "postgres")
        self.data, self.log = self.dir / "data", self.dir / "server.log"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.url = f"postgresql+psycopg://digitbot@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", str(self.data), "-U", "digitbot", "--auth=trust", "-E", "UTF8", "--no-sync")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self.as_user, str(self.bin / tool), *args], capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stdout}{done.stderr}{log[-2000:]}")

    def restart(self) -> None:
        """A fast restart, as `pg_ctlcluster <version> main restart` does: open sessions are ended."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-m", "fast", "restart")

    def close(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    server = PrivateCluster()
    try:
        upgrade_to_head(server.url)
        yield server
    finally:
        server.close()


@dataclass
class Tally:
    wanted: dict[tuple[int, int, int], int] = field(default_factory=dict)  # (user, reading, position) -> digit
    recorded_at: list[float] = field(default_factory=list)
    sorry_presses: list[float] = field(default_factory=list)  # when a press was sent that got "try again"
    sorry_photos: int = 0
    messages: dict[tuple[int, int], int] = field(default_factory=dict)  # (user, reading) -> the bot's answer


async def _photo(h: BotHarness, user: int, row: str, tally: Tally) -> dict[str, Any]:
    """A photo, sent again after "try again" (as a user would)."""
    for _ in range(200):
        sent = await h.users.send_photo(user, user, digits_photo(row))
        answer = await h.users.wait_for_bot_message(user, after=sent, timeout=60)
        if buttons(answer):
            return answer
        assert answer["text"] == SORRY, answer["text"]
        tally.sorry_photos += 1
        await asyncio.sleep(0.3)
    raise AssertionError("a photo never got an answer")


async def _label(h: BotHarness, user: int, message_id: int, reading: int, position: int, digit: int,
                 tally: Tally) -> None:
    """Tap the digit's button (a row: first the position's button, which opens the 0-9 picker), as a
    user does; after "try again", tap again until the label is recorded."""
    want = f"d:{reading}:{position}:{digit}"
    for _ in range(200):
        shown = buttons(await h.message(user, message_id))
        data = want if want in shown else f"p:{reading}:{position}"
        assert data in shown, shown
        pressed = time.monotonic()
        query = await h.users.press_button(user, user, message_id, data)
        answer = await wait_answer(h, query, timeout=60)
        if answer.get("text") == SORRY:
            tally.sorry_presses.append(pressed)
            await asyncio.sleep(0.3)
        elif data == want:
            assert str(digit) in answer["text"], answer["text"]  # "Recorded: ..."
            tally.recorded_at.append(time.monotonic())
            return
    raise AssertionError("a label was never recorded")


async def _user(h: BotHarness, user: int, index: int, tally: Tally, photos_done: asyncio.Event,
                counter: list[int]) -> None:
    answers = []
    for k in range(PHOTOS):
        answers.append(await _photo(h, user, ROWS[(index + k) % len(ROWS)], tally))
    counter[0] += 1
    if counter[0] == USERS:
        photos_done.set()
    await photos_done.wait()  # every user starts labelling together: the load the restart meets
    for k, answer in enumerate(answers):
        reading = reading_id_of(answer)
        shown = [b for b in buttons(answer) if b.startswith("p:")] or ["p:single"]
        for position in range(len(shown)):
            digit = (user + k + position) % 10
            tally.wanted[(user, reading, position)] = digit
            tally.messages[(user, reading)] = int(answer["message_id"])
            await _label(h, user, int(answer["message_id"]), reading, position, digit, tally)
            await asyncio.sleep(TAP_EVERY_S)


def test_postgres_restarted_while_users_label_loses_nothing(
        cluster: PrivateCluster, tmp_path: Path, recognizer: Recognizer) -> None:
    sessions = session_factory(cluster.url)
    direct = create_engine(cluster.url, poolclass=NullPool)  # the test's own look, a new connection each time
    tally = Tally()

    def started_at() -> object:
        with direct.connect() as conn:
            return conn.execute(text("SELECT pg_postmaster_start_time()")).scalar_one()

    async def scenario() -> tuple[float, float]:
        async with running_bot(tmp_path, recognizer, sessions=sessions) as h:
            users = [new_user_id() for _ in range(USERS)]
            for user in users:
                await h.users.set_user(user, language_code="en")
            photos_done, counter = asyncio.Event(), [0]
            work = asyncio.gather(*(_user(h, u, i, tally, photos_done, counter) for i, u in enumerate(users)))
            await asyncio.wait_for(asyncio.shield(photos_done.wait()), timeout=120)
            deadline = time.monotonic() + 60
            while len(tally.recorded_at) < 8:  # labels are being written...
                assert time.monotonic() < deadline and not work.done(), "no labels recorded"
                await asyncio.sleep(0.02)
            began = time.monotonic()
            await asyncio.to_thread(cluster.restart)  # ...when the server restarts under them
            back = time.monotonic()
            await asyncio.wait_for(work, timeout=120)

            # Restarted again while nobody writes: the pool holds only connections the server has
            # closed. Each user's next tap must just work (pool_pre_ping; without it the first
            # taps after the restart were answered "try again").
            await asyncio.to_thread(cluster.restart)
            failed_before = len(tally.sorry_presses)
            for user in users:
                (reading, position), digit = next(((r, p), d) for (u, r, p), d in tally.wanted.items() if u == user)
                tally.wanted[(user, reading, position)] = (digit + 1) % 10
                await _label(h, user, tally.messages[(user, reading)], reading, position, (digit + 1) % 10, tally)
            assert len(tally.sorry_presses) == failed_before, "a tap after an idle restart failed"
            return began, back

    first_start = started_at()
    try:
        began, back = asyncio.run(scenario())
        assert started_at() != first_start  # the server really restarted

        total = USERS * PHOTOS
        assert len(tally.wanted) >= total  # at least one digit per photo was labelled
        before, after = sum(t < began for t in tally.recorded_at), sum(t > back for t in tally.recorded_at)
        assert before >= 8 and after >= 8, (before, after)  # the restart hit a stream of labels
        # Presses sent once the server was back never failed: the pool dropped its dead connections.
        assert not [t for t in tally.sorry_presses if t > back + 0.5], (tally.sorry_presses, back)

        with sessions() as session:
            for (user, reading, position), digit in tally.wanted.items():
                view = repo.get_reading(session, telegram_id=user, reading_id=reading)
                assert view is not None, (user, reading)
                assert view.digits[position].label == digit, (user, reading, position, view.digits[position])
            rows = session.scalar(select(func.count()).select_from(Label))
        assert rows == len(tally.wanted) + USERS  # each label stored once (+ the corrections after the
        # idle restart, which keep the label they replace as history): no retried press added a row
        print(f"{len(tally.wanted)} labels, {len(tally.sorry_presses)} presses answered 'try again' during "
              f"the {back - began:.1f} s restart, {tally.sorry_photos} photos; all stored once")
    finally:
        sessions.kw["bind"].dispose()
        direct.dispose()
