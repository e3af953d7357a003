"""PostgreSQL goes away while the bot is in use (slow; needs DIGITBOT_TEST_POSTGRES_URL).

The bot (real Application + emulator) talks to a real PostgreSQL through a TCP proxy in this test.
"Going away" is the proxy dropping every open connection and refusing new ones, at the worst
moment: inside the photo's transaction (rows flushed, not committed) and inside a label's
transaction, then for a while (a button and a text correction in the outage). The user gets the
"try again" message in their Telegram language; nothing half-written is left; once the proxy lets
connections through again the *same* process answers normally (the pool replaces its dead
connections: ``pool_pre_ping`` in ``storage.db.create_db_engine``). Finally the server itself
terminates the bot's idle connections (``pg_terminate_backend``) and the next photo is answered
without any error at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, func, make_url, select, text
from sqlalchemy.orm import Session

import storage.repository as repository_module
from core.recognize import Recognizer
from storage.db import session_factory, upgrade_to_head
from storage.models import Label, Prediction, Reading, Sample, User
from tests.bot.support import digits_photo, running_bot
from tests.reliability.support import buttons, expected, new_user_id, reading_id_of, wait_answer

POSTGRES_URL = os.environ.get("DIGITBOT_TEST_POSTGRES_URL")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.skipif(not POSTGRES_URL, reason="DIGITBOT_TEST_POSTGRES_URL not set"),
]
SORRY = "Sorry, something went wrong. Please try again."


class FlakyProxy:
    """A TCP relay 127.0.0.1:port -> target that can drop every connection and refuse new ones
    (``down``), or drop them and leave new ones hanging without a word (``blackhole``, a server that
    stopped answering)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._up = threading.Event()
        self._up.set()
        self._blackhole = False
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self.refused = 0
        threading.Thread(target=self._accept, name="pg-proxy", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            if not self._up.is_set():
                self.refused += 1
                if self._blackhole:
                    self._held.append(client)  # accepted, never answered
                else:
                    _abort(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _abort(client)
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                self._forget(sock)

    def _forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def down(self) -> None:
        """The database is gone: every open connection is cut, new ones are refused."""
        self._up.clear()
        with self._lock:
            open_sockets = list(self._sockets)
        for sock in open_sockets:
            self._forget(sock)

    def blackhole(self) -> None:
        self._blackhole = True
        self.down()

    def up(self) -> None:
        self._blackhole = False
        self._up.set()
        for sock in self._held:
            _abort(sock)
        self._held.clear()

    def close(self) -> None:
        self._listener.close()
        self.down()


def _abort(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture
def postgres() -> Iterator[tuple[str, Engine]]:
    """A fresh schema, migrated: (its URL, a direct engine for checking what was stored)."""
    from tests.storage.conftest import new_postgres_schema_url

    url, drop = new_postgres_schema_url()
    upgrade_to_head(url)
    direct = create_engine(url)
    try:
        yield url, direct
    finally:
        direct.dispose()
        drop()


def _rows(direct: Engine, telegram_id: int) -> dict[str, int]:
    """What is stored for the user, and anything half-written (a reading without its digits, a
    digit without its prediction, a label whose digit or reading is gone)."""
    with Session(direct) as session:
        user_id = session.scalar(select(User.id).where(User.telegram_id == telegram_id))

        def count(model: Any, *where: Any) -> int:
            return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)

        return {
            "readings": count(Reading, Reading.user_id == user_id),
            "samples": count(Sample, Sample.user_id == user_id),
            "predictions": count(Prediction, Prediction.user_id == user_id),
            "label_rows": count(Label, Label.user_id == user_id),
            "readings_without_digits": count(Reading, ~select(Sample.id).where(
                Sample.reading_id == Reading.id).exists()),
            "digits_without_prediction": count(Sample, ~select(Prediction.id).where(
                Prediction.sample_id == Sample.id).exists()),
            "labels_without_digit": count(Label, ~select(Sample.id).where(Sample.id == Label.sample_id).exists()),
        }


async def _settled(direct: Engine, telegram_id: int, *, unlinked: int = 0) -> None:
    """Wait until the bot has finished with the user's photos (each reading linked to its answer but
    ``unlinked``), so that an outage started next hits only what the test means it to."""
    for _ in range(200):
        with Session(direct) as session:
            found = session.scalar(select(func.count()).select_from(Reading).join(User).where(
                User.telegram_id == telegram_id, Reading.bot_message_id.is_(None)))
        if found == unlinked:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("readings not linked to their answers")


def _healthy(rows: dict[str, int], *, readings: int, labels: int) -> None:
    assert rows["readings"] == readings and rows["samples"] == readings and rows["predictions"] == readings, rows
    assert rows["label_rows"] == labels, rows
    assert rows["readings_without_digits"] == rows["digits_without_prediction"] == rows["labels_without_digit"] == 0


def test_postgres_goes_away_mid_use_and_comes_back(
        postgres: tuple[str, Engine], tmp_path: Path, recognizer: Recognizer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url, direct = postgres
    target = make_url(url)
    proxy = FlakyProxy(target.host or "127.0.0.1", target.port or 5432)
    app_name = f"digitbot-outage-{uuid.uuid4().hex[:8]}"
    via_proxy = target.set(host="127.0.0.1", port=proxy.port).update_query_dict({"application_name": app_name})
    sessions = session_factory(via_proxy)
    real_record, real_label = repository_module.record_reading, repository_module.label_sample
    real_attach = repository_module.attach_bot_message

    def attach_during_outage(session: Session, **kwargs: Any) -> Any:
        proxy.down()
        return real_attach(session, **kwargs)

    def record_then_outage(session: Session, **kwargs: Any) -> Any:
        stored = real_record(session, **kwargs)
        session.flush()  # the reading, its digits and predictions are in the open transaction...
        proxy.down()  # ...when the database goes away, before the commit
        return stored

    def label_then_outage(session: Session, **kwargs: Any) -> Any:
        result = real_label(session, **kwargs)
        session.flush()
        proxy.down()
        return result

    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer, sessions=sessions) as h:
            user = new_user_id()
            await h.users.set_user(user, language_code="zh-hans")
            sorry = expected("zh-hans", SORRY)
            assert sorry != SORRY  # a real translation
            first = await h.photo_reply(user, user, digits_photo("7"))
            rid = reading_id_of(first)
            await _settled(direct, user)
            _healthy(_rows(direct, user), readings=1, labels=0)

            # 1. The photo's transaction is open (rows flushed) when the database goes away.
            monkeypatch.setattr(repository_module, "record_reading", record_then_outage)
            sent = await h.users.send_photo(user, user, digits_photo("3"))
            answer = await h.users.wait_for_bot_message(user, after=sent, timeout=60)
            assert answer["text"] == sorry and not buttons(answer)
            monkeypatch.setattr(repository_module, "record_reading", real_record)
            _healthy(_rows(direct, user), readings=1, labels=0)  # the second reading was never committed

            # 2. Still down: a button press and a text correction get the same answer.
            query = await h.users.press_button(user, user, first["message_id"], f"d:{rid}:0:1")
            alert = await wait_answer(h, query, timeout=60)
            assert alert["text"] == sorry and alert["show_alert"]
            sent = await h.users.send_text(user, user, "1", reply_to=first["message_id"])
            answer = await h.users.wait_for_bot_message(user, after=sent, timeout=60)
            assert answer["text"] == sorry
            assert proxy.refused > 0  # the bot really tried to reconnect and was refused
            _healthy(_rows(direct, user), readings=1, labels=0)

            # 3. Back up: the same process answers a photo, no restart. The database goes away again
            # just after the answer was sent, as the answer is being linked to its reading: the user
            # has the answer (its buttons work) and is not told to try again (that would store it twice).
            proxy.up()
            monkeypatch.setattr(repository_module, "attach_bot_message", attach_during_outage)
            again = await h.photo_reply(user, user, digits_photo("3"))
            assert buttons(again)
            await asyncio.sleep(1.0)
            monkeypatch.setattr(repository_module, "attach_bot_message", real_attach)
            assert not [m for m in await h.users.messages(user) if m["message_id"] > again["message_id"]]
            proxy.up()
            _healthy(_rows(direct, user), readings=2, labels=0)

            # 4. The label's transaction is open when the database goes away again.
            monkeypatch.setattr(repository_module, "label_sample", label_then_outage)
            query = await h.users.press_button(user, user, first["message_id"], f"d:{rid}:0:1")
            alert = await wait_answer(h, query, timeout=60)
            assert alert["text"] == sorry and alert["show_alert"]
            monkeypatch.setattr(repository_module, "label_sample", real_label)
            _healthy(_rows(direct, user), readings=2, labels=0)  # no label without its commit
            proxy.up()
            done = await h.press(user, user, first["message_id"], f"d:{rid}:0:1")
            assert done["text"] == expected("zh-hans", "Recorded: {digits}", digits="1")
            _healthy(_rows(direct, user), readings=2, labels=1)

            # 5. The server kills the bot's idle connections: the next requests do not even notice.
            with direct.connect() as conn:
                killed = conn.execute(text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = :n"
                ), {"n": app_name}).scalar_one()
            assert killed >= 1
            refused_before = proxy.refused
            third = await h.photo_reply(user, user, digits_photo("5"))
            assert buttons(third)
            await _settled(direct, user, unlinked=1)  # the answer whose link was cut in step 3
            reply = await h.text_reply(user, user, "6", reply_to=third["message_id"])
            assert reply["text"] != sorry and "6" in reply["text"]
            assert proxy.refused == refused_before
            _healthy(_rows(direct, user), readings=3, labels=2)

    try:
        asyncio.run(scenario())
    finally:
        sessions.kw["bind"].dispose()
        proxy.close()


def test_postgres_that_stops_answering_gets_a_timely_try_again(
        postgres: tuple[str, Engine], tmp_path: Path, recognizer: Recognizer) -> None:
    """The server stops answering new connections (they hang, no refusal): the engine's
    connect_timeout (storage.db.POSTGRES_CONNECT_ARGS) turns that into "try again" within seconds.
    (With ``connect_timeout=0`` in the URL the same photo had no answer after 60 s.)"""
    url, direct = postgres
    target = make_url(url)
    proxy = FlakyProxy(target.host or "127.0.0.1", target.port or 5432)
    sessions = session_factory(target.set(host="127.0.0.1", port=proxy.port))

    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer, sessions=sessions) as h:
            user = new_user_id()
            await h.users.set_user(user, language_code="en")
            assert buttons(await h.photo_reply(user, user, digits_photo("7")))
            await _settled(direct, user)
            proxy.blackhole()
            started = asyncio.get_running_loop().time()
            sent = await h.users.send_photo(user, user, digits_photo("3"))
            answer = await h.users.wait_for_bot_message(user, after=sent, timeout=60)
            assert answer["text"] == SORRY
            assert asyncio.get_running_loop().time() - started < 30  # a few 5 s connection attempts
            proxy.up()
            assert buttons(await h.photo_reply(user, user, digits_photo("3")))
            await _settled(direct, user)
            _healthy(_rows(direct, user), readings=2, labels=0)

    try:
        asyncio.run(scenario())
    finally:
        sessions.kw["bind"].dispose()
        proxy.close()
