"""The durable inbox: every update is written to the database before Telegram can be told it arrived,
and one whose handling did not finish is handled again when the bot starts.

python-telegram-bot's Updater puts each fetched update into the Application's update queue and only
then confirms it (the next getUpdates carries ``offset = last + 1``); in webhook mode it answers the
POST with 200 only after that put returns. :class:`InboxQueue` is that queue: its ``put`` writes the
update down first, so an update is durable before it can be acknowledged. :class:`InboxProcessor`
(the Application's update processor) marks it done when its handlers have run, or "failed" when one
raised, which :class:`InboxApplication` notices (the error handler has asked the user to try again;
Telegram delivering it again has it handled again, up to ``max_attempts`` times). At start-up
:meth:`UpdateInbox.replay` puts the updates still pending (their process died) back into the queue;
after ``max_attempts`` handlings that did not finish (a poison update) it is given up on with an
error in the log.

In webhook mode several replicas share the inbox, and each pending update is leased to the replica
that took it (``owner``, its host name): every ``lease / 3`` the replica renews the lease of the
updates in its hands (a heartbeat) and takes over, with :func:`inbox_take_over`, the pending updates
whose lease expired, those of a replica that was killed or replaced under another name, so that
they are handled by one survivor instead of waiting forever for that name to come back.

Replays are safe because the handlers are idempotent by update id (``mark_update_processed`` in the
same transaction as a reading or a label), and a photo whose reading was stored before the crash but
never answered is answered from the stored reading (``BotServices`` notes which updates are replays).

If the database cannot take the update, it is handled anyway, without the guarantee (the handlers
then answer "try again" as before), and a warning is logged; for the next 10 s updates are handled
without trying the inbox, so that an unreachable database (connections hanging until their
timeout) does not hold every update back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from telegram import Update
from telegram.ext import Application, SimpleUpdateProcessor

from storage.repository.inbox import Replay, inbox_heartbeat, inbox_take_over

if TYPE_CHECKING:
    from bot.services import BotServices

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3
RETENTION = timedelta(days=1)
LEASE = timedelta(seconds=60)  # webhook mode: a pending update not renewed for this long is taken over
_PURGE_EVERY_S = 3600.0
_DATABASE_DOWN_S = 10.0  # after a failed write, updates are handled unrecorded for this long
_HANDLE = frozenset({"new", "retry", "pending"})
_WRAP_UP_POLLS = 200  # x 50 ms: how long a redelivery waits for a failed handling to be recorded


class InboxQueue(asyncio.Queue[object]):
    """The Application's update queue; ``put`` writes an update down before queueing it, and drops
    one this process already has, or that was handled or given up on."""

    def __init__(self, inbox: UpdateInbox) -> None:
        super().__init__()
        self._inbox = inbox

    async def put(self, item: object) -> None:
        if isinstance(item, Update) and not await self._inbox.admit(item):
            return
        await super().put(item)

    async def put_taken(self, item: object) -> None:
        """Queue an update the inbox already holds and has claimed (a replay)."""
        await super().put(item)


class InboxProcessor(SimpleUpdateProcessor):
    """Runs updates concurrently (as ``concurrent_updates(True)`` does) and tells the inbox how each
    ended. A handler's exception reaches the error handlers inside the coroutine; the inbox hears of
    it through :meth:`InboxApplication.process_error`."""

    def __init__(self, inbox: UpdateInbox, max_concurrent_updates: int = 256) -> None:
        super().__init__(max_concurrent_updates)
        self._inbox = inbox

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        await coroutine  # cancelled (shutdown) or the process killed: stays pending, replayed
        if isinstance(update, Update):
            await self._inbox.finished(update.update_id)

    async def shutdown(self) -> None:
        await self._inbox.stop()
        await super().shutdown()


class InboxApplication(Application[Any, Any, Any, Any, Any, Any]):
    """The Application, telling the inbox (``inbox`` attribute, set by bot/app.py) which updates'
    handling raised; the error handlers run as before."""

    inbox: UpdateInbox | None = None

    async def process_error(self, update: object | None, error: Exception, job: Any = None,
                            coroutine: Any = None) -> bool:
        if self.inbox is not None and isinstance(update, Update):
            self.inbox.handling_raised(update.update_id)
        return await super().process_error(update, error, job, coroutine)


class UpdateInbox:
    """Glue between the Application and the inbox functions of :class:`BotServices`.

    ``owner`` names this process's host; ``replay_owner`` is whose pending updates a start-up
    replays: everyone's with long polling (one bot process at a time); in webhook mode this host's
    and those whose lease expired (other replicas may still be handling theirs). ``lease``: how long
    a replica's pending update is its own without a heartbeat (webhook mode)."""

    def __init__(self, services: BotServices, *, webhook: bool = False, max_attempts: int = MAX_ATTEMPTS,
                 retention: timedelta = RETENTION, owner: str | None = None, lease: timedelta = LEASE) -> None:
        self.services = services
        self.max_attempts = max_attempts
        self.retention = retention
        self.lease = lease
        self.owner = owner or socket.gethostname()[:255]
        self.webhook = webhook
        self.replay_owner = self.owner if webhook else None
        self._lease_task: asyncio.Task[None] | None = None
        self.queue = InboxQueue(self)
        self.processor = InboxProcessor(self)
        self._claimed: set[int] = set()  # in this process's hands: queued or being handled
        self._raised: set[int] = set()  # claimed updates whose handling raised
        self._unrecorded: set[int] = set()  # claimed but not written down (the database failed)
        self._last_purge = 0.0
        self._skip_until = 0.0  # the database just failed: do not make every update wait for it

    # -- in ---------------------------------------------------------------------------------------
    async def admit(self, update: Update) -> bool:
        """Write the update down; whether this process should handle it."""
        update_id = update.update_id
        if update_id in self._raised:
            # its handling raised and is being wrapped up: once the inbox has it as failed, this
            # redelivery is a retry like any other
            for _ in range(_WRAP_UP_POLLS):
                await asyncio.sleep(0.05)
                if update_id not in self._claimed:
                    break
        if update_id in self._claimed:
            log.info("update %s is already being handled here; ignoring the redelivery", update_id)
            return False
        self._claimed.add(update_id)  # before the database call: a concurrent redelivery is dropped
        if time.monotonic() < self._skip_until:
            self._unrecorded.add(update_id)
            return True
        try:
            state = await asyncio.to_thread(self.services.inbox_receive, update_id, update.to_dict(),
                                            self.owner, self.max_attempts, self.retention)
        except Exception as error:  # never lose it for want of a database: handle it unrecorded
            log.warning("update %s not written to the inbox (%s); handling it, and those of the next %.0f s, "
                        "without replay on a crash", update_id, error.__class__.__name__, _DATABASE_DOWN_S)
            self._skip_until = time.monotonic() + _DATABASE_DOWN_S
            self._unrecorded.add(update_id)
            return True
        # "pending" here: taken by a process that died, or by another replica (a webhook retry)
        if state == "pending" and self.webhook:
            try:  # its replica died: this one takes its lease (counted as an attempt)
                taken = await self._db(inbox_take_over, owner=self.owner, lease_before=self._lease_before(),
                                       max_attempts=self.max_attempts, update_ids=[update_id])
            except Exception as error:
                log.warning("update %s: its lease not taken over (%s)", update_id, error.__class__.__name__)
            else:
                if taken.given_up:
                    self._claimed.discard(update_id)
                    self._log_given_up(taken)
                    return False
        if state in _HANDLE:
            return True
        self._claimed.discard(update_id)
        if state == "given_up":
            log.warning("update %s was given up on after %d failed attempts; ignoring it", update_id,
                        self.max_attempts)
        else:
            log.info("update %s was already %s; not handling it again", update_id, state)
        return False

    async def replay(self, bot: Any) -> int:
        """At start-up (before polling or the webhook starts): queue the updates that were taken but
        not finished before the last stop. Returns how many."""
        try:
            replay = await asyncio.to_thread(self.services.inbox_take_pending, self.replay_owner,
                                             self.max_attempts)
            if self.webhook:  # and what replicas that are gone left behind
                taken = await self._db(inbox_take_over, owner=self.owner, lease_before=self._lease_before(),
                                       max_attempts=self.max_attempts)
                replay = Replay(replay.pending + taken.pending, replay.given_up + taken.given_up)
        except Exception as error:
            log.error("could not read the update inbox (%s); nothing replayed", error.__class__.__name__)
            return 0
        queued = await self._queue_replay(replay, bot)
        if queued:
            log.warning("replaying %d update(s) whose handling did not finish before the last stop", queued)
        await self._purge()
        if self.webhook and self._lease_task is None:
            self._lease_task = asyncio.create_task(self._keep_leases(bot), name="inbox-leases")
        return queued

    async def stop(self) -> None:
        """Stop renewing leases (shutdown); what is still pending is taken over once they expire."""
        task, self._lease_task = self._lease_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _keep_leases(self, bot: Any) -> None:
        """Webhook mode: renew the lease of the updates in this process's hands, and take over those
        whose lease expired, every ``lease / 3``."""
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            try:
                await self.keep_leases(bot)
            except Exception as error:  # the database is down: try again next time
                log.warning("update inbox leases not renewed (%s)", error.__class__.__name__)

    async def keep_leases(self, bot: Any) -> int:
        """One heartbeat; returns how many updates were taken over from replicas that are gone."""
        held = sorted(self._claimed - self._unrecorded)
        if held:
            await self._db(inbox_heartbeat, owner=self.owner, update_ids=held)
        taken = await self._db(inbox_take_over, owner=self.owner, lease_before=self._lease_before(),
                               max_attempts=self.max_attempts)
        queued = await self._queue_replay(taken, bot)
        if queued:
            log.warning("took over %d update(s) whose replica stopped renewing their lease", queued)
        return queued

    def _lease_before(self) -> datetime:
        return datetime.now(UTC) - self.lease

    async def _db(self, work: Callable[..., Any], **kwargs: Any) -> Any:
        def run() -> Any:
            with self.services.sessions.begin() as session:
                return work(session, **kwargs)
        return await asyncio.to_thread(run)

    def _log_given_up(self, replay: Replay) -> None:
        for update_id in replay.given_up:
            log.error("giving up on update %s: its handling did not finish in %d attempts (kept in the "
                      "inbox as failed until it is purged)", update_id, self.max_attempts)

    async def _queue_replay(self, replay: Replay, bot: Any) -> int:
        self._log_given_up(replay)
        queued = 0
        for pending in replay.pending:
            if pending.update_id in self._claimed:  # in hand already (its lease lapsed meanwhile)
                continue
            try:
                update = Update.de_json(pending.payload, bot)
            except Exception:
                log.exception("update %s in the inbox cannot be read back; dropping it", pending.update_id)
                await self._record(self.services.inbox_done, pending.update_id)
                continue
            self._claimed.add(pending.update_id)
            self.services.note_replayed(pending.update_id)
            await self.queue.put_taken(update)
            queued += 1
        return queued

    # -- out --------------------------------------------------------------------------------------
    def handling_raised(self, update_id: int) -> None:
        """A handler raised for this update (the error handler tells the user to try again)."""
        if update_id in self._claimed:
            self._raised.add(update_id)

    async def finished(self, update_id: int) -> None:
        if update_id not in self._claimed:
            return  # not admitted by this inbox (e.g. put straight into the queue by a test)
        if update_id in self._unrecorded:  # nothing in the database to update
            self._unrecorded.discard(update_id)
            self._raised.discard(update_id)
            self._claimed.discard(update_id)
            return
        if update_id in self._raised:
            if await self._record(self.services.inbox_failed, update_id, self.max_attempts):
                log.error("giving up on update %s: its handling failed %d times", update_id, self.max_attempts)
        else:
            await self._record(self.services.inbox_done, update_id)
        # after the database knows (no await between the two): a redelivery meanwhile waits (failed)
        # or is dropped (done)
        self._raised.discard(update_id)
        self._claimed.discard(update_id)
        if time.monotonic() - self._last_purge > _PURGE_EVERY_S:
            await self._purge()

    async def _record(self, work: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(work, *args)
        except Exception as error:  # it stays pending: handled again at the next start, idempotently
            log.warning("update inbox not updated (%s): %s", error.__class__.__name__, args[:1])
            return None

    async def _purge(self) -> None:
        self._last_purge = time.monotonic()
        removed = await self._record(self.services.inbox_purge, self.retention)
        if removed:
            log.info("purged %d handled update(s) older than %s from the inbox", removed, self.retention)
