"""The per-user photo limiter (bot/ratelimit.py) with a fake clock."""

from __future__ import annotations

import asyncio
import copy
import itertools
import time
from pathlib import Path

import pytest
from telegram import Update

from bot.ratelimit import LIMITER_KEY, REFUSAL_NOTICE_EVERY_S, PhotoRateLimiter, photo_limiter
from core.recognize import Recognizer
from tests.bot.support import digits_photo, running_bot
from tests.reliability.support import buttons, new_user_id, stored_readings

REFUSED = ("Too many photos are waiting, so I'm not reading the ones you send now. Please send the photos I "
           "don't answer again in a minute.")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_rate_then_refusal_and_recovery() -> None:
    clock = Clock()
    limiter = PhotoRateLimiter(rate_per_s=2.0, burst=3, max_waiting=2, clock=clock)
    assert [limiter.admit(1).waits for _ in range(3)] == [False] * 3  # the burst goes through at once
    fourth, fifth = limiter.admit(1), limiter.admit(1)
    assert (fourth.wait_s, fourth.notify) == (pytest.approx(0.5), True)  # told once...
    assert (fifth.wait_s, fifth.notify) == (pytest.approx(1.0), False)  # ...not twice
    refused = limiter.admit(1)
    assert refused.refused and refused.notify and limiter.waiting(1) == 2  # too many waiting: told to resend...
    assert not limiter.admit(1).notify  # ...once, not for every refused photo
    assert not limiter.admit(2).waits  # other users have their own bucket
    limiter.done(1, fourth)
    limiter.done(1, fifth)
    clock.now = 10.0
    assert not limiter.admit(1).waits and limiter.waiting(1) == 0 and limiter.total_waiting() == 0
    later = [limiter.admit(1) for _ in range(6)]  # 2 more from the burst, 2 wait, 2 refused
    assert [(a.refused, a.notify) for a in later[-2:]] == [(True, False)] * 2  # told 10 s ago: not again
    clock.now = 10.0 + REFUSAL_NOTICE_EVERY_S
    again = [limiter.admit(1) for _ in range(4)]  # the burst refilled; the waiting room is still full
    assert [(a.refused, a.notify) for a in again if a.refused][:1] == [(True, True)]  # much later: told again


def test_sustained_rate_is_never_exceeded() -> None:
    clock = Clock()
    limiter = PhotoRateLimiter(rate_per_s=3.0, burst=20, max_waiting=1000, clock=clock)
    starts = []
    for i in range(50):  # 50 photos in 10 s
        clock.now = i * 0.2
        starts.append(clock.now + limiter.admit(7).wait_s)
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(starts))
    window = [s for s in starts if s >= 5.0 and s < 15.0]
    assert len(window) <= 3.0 * 10 + 1
    assert max(starts) == pytest.approx((50 - 20) / 3.0, abs=0.01)  # done when the bucket allows, no later


def test_bad_settings_and_shared_instance() -> None:
    with pytest.raises(ValueError):
        PhotoRateLimiter(rate_per_s=0)
    bot_data: dict[str, object] = {}
    assert photo_limiter(bot_data) is photo_limiter(bot_data)


def test_photos_waiting_across_all_users_are_capped() -> None:
    clock = Clock()
    limiter = PhotoRateLimiter(rate_per_s=1.0, burst=1, max_waiting=10, max_waiting_total=4, clock=clock)
    for user in (1, 2):
        assert not limiter.admit(user).waits  # each user's burst
    admitted = [limiter.admit(user) for user in (1, 1, 2, 2)]
    assert all(a.waits for a in admitted) and limiter.total_waiting() == 4
    assert limiter.admit(3).waits is False  # a user within their rate never waits, never refused
    assert limiter.admit(3).refused  # over their rate while the waiting room is full: refused
    assert limiter.admit(1).refused and limiter.waiting(1) == 2  # although under their own max
    limiter.done(1, admitted[0])
    assert limiter.total_waiting() == 3 and limiter.admit(3).waits  # room again


def test_the_applications_limiter_takes_at_most_half_the_update_slots() -> None:
    bot_data: dict[str, object] = {}
    limiter = photo_limiter(bot_data, slots=256)
    assert limiter.max_waiting_total == 128 and limiter.max_waiting == 100
    assert photo_limiter({}, slots=40).max_waiting_total == 20 and photo_limiter({}, slots=40).max_waiting == 20


FLOODERS, FLOOD_PHOTOS = 6, 60


@pytest.mark.slow
def test_flooding_users_do_not_take_the_update_slots(tmp_path: Path, recognizer: Recognizer) -> None:
    """Six users send 60 photos each at once (360 updates, more than the Application's 256
    concurrent-update slots) at 1 photo/s after a burst of 5; then another user sends one photo. It
    is answered within a few seconds of reaching the Application. Without the cap on photos waiting
    across users (check: ``max_waiting_total=10**6``) ~300 sleeping flood handlers hold every slot and
    that photo waits about 10 s for one to free.

    The clock starts when the update enters the Application's queue: before that, the update inbox
    writes every update to the database (bot/inbox.py), in arrival order, which the limiter cannot
    change (~25 ms per update with SQLite on this machine, so the flood takes a few seconds to get in)."""
    async def scenario() -> None:
        async with running_bot(tmp_path, recognizer) as h:
            slots = h.application.update_processor.max_concurrent_updates
            limiter = PhotoRateLimiter(rate_per_s=1.0, burst=5, max_waiting=100, max_waiting_total=slots // 2)
            h.application.bot_data[LIMITER_KEY] = limiter
            flooders, other = [new_user_id() for _ in range(FLOODERS)], new_user_id()
            queued_at: dict[int, float] = {}
            queue = h.application.update_queue
            put = queue.put

            async def put_and_note(item: object) -> None:
                if isinstance(item, Update) and item.effective_user is not None:
                    queued_at.setdefault(item.effective_user.id, time.monotonic())
                await put(item)
            queue.put = put_and_note  # type: ignore[method-assign]

            state = h.server.state
            photo = state.files.add_photo(digits_photo("1", height=80))
            sent: dict[int, list[int]] = {user: [] for user in flooders}
            for _ in range(FLOOD_PHOTOS):  # all at once, as a flood arriving together
                for user in flooders:
                    message = state.add_message(state.chat_for_user(user, user), state.users[user], {"photo": photo})
                    state.updates.append({"update_id": state.next_update_id, "message": copy.deepcopy(message)})
                    state.next_update_id += 1
                    sent[user].append(int(message["message_id"]))
            state.changed()
            other_sent = await h.users.send_photo(other, other, digits_photo("4"))
            reply = await h.users.wait_for_reply(other, other_sent, timeout=120)
            elapsed = time.monotonic() - queued_at[other]
            assert buttons(reply)
            assert elapsed < 3.0, f"another user's photo waited {elapsed:.1f} s for a slot behind the flood"
            assert limiter.total_waiting() <= slots // 2

            for _ in range(600):  # every waiting photo has had its turn (read and answered)
                if limiter.total_waiting() == 0:
                    break
                await asyncio.sleep(0.2)
            assert limiter.total_waiting() == 0
            for user in flooders:  # each photo read and answered in turn, or refused (not read) with a notice
                messages = await h.users.messages(user)
                readings = [m for m in messages if m["from"]["is_bot"] and buttons(m)]
                notices = [m for m in messages if m["from"]["is_bot"] and m["text"] == REFUSED]
                assert {m["reply_to_message"]["message_id"] for m in readings} <= set(sent[user])
                assert stored_readings(h, user) == len(readings) >= 5  # none stored without its answer
                assert len(readings) < FLOOD_PHOTOS and 1 <= len(notices) <= 2  # refused, told once
    asyncio.run(scenario())
