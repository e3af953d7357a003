"""The per-user photo limiter (bot/ratelimit.py) with a fake clock."""

from __future__ import annotations

import itertools

import pytest

from bot.ratelimit import PhotoRateLimiter, photo_limiter


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
    assert limiter.admit(1).refused and limiter.waiting(1) == 2  # too many waiting: asked to resend
    assert not limiter.admit(2).waits  # other users have their own bucket
    limiter.done(1, fourth)
    limiter.done(1, fifth)
    clock.now = 10.0
    assert not limiter.admit(1).waits and limiter.waiting(1) == 0 and limiter.total_waiting() == 0


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
