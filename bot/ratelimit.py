"""Per-user flood control for photos: a token bucket that delays, never drops.

Each user may send `burst` photos at once and `rate_per_s` photos a second after that. A photo over
the rate is not refused: it waits its turn (the caller sleeps `Admission.wait_s`), and the first
photo of a burst that has to wait tells the user so, once. Only when a user already has
`max_waiting` photos waiting is a photo refused, so one person cannot fill memory; the user is told
to send the unanswered photos again later, at most once every `REFUSAL_NOTICE_EVERY_S` (a reply per
refused photo would spend the bot's overall Bot API rate, ~30 messages/s shared by every user's
answers, and so delay everyone else).

A waiting photo sleeps inside its handler, so it holds one of the Application's concurrent-update
slots (256) until its turn; the update inbox (bot/inbox.py) marks an update done only when its
handler has finished, so the wait cannot move out of the handler without losing that guarantee.
Instead the photos waiting across *all* users are capped at `max_waiting_total`, half the slots
(`photo_limiter(..., slots=)`): past it, over-rate photos are refused as above, so floods, from one
user or several, can never take more than half the slots and everyone else's photos (within their
rate, they never wait) are handled at once. Nothing is stored for a photo before its turn comes,
so a refused or delayed photo leaves nothing half-written.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_RATE_PER_S = 3.0
DEFAULT_BURST = 20
DEFAULT_MAX_WAITING = 100
DEFAULT_MAX_WAITING_TOTAL = 128  # half of python-telegram-bot's 256 concurrent-update slots
REFUSAL_NOTICE_EVERY_S = 30.0
_PRUNE_AT = 10_000  # buckets kept before idle (full) ones are dropped


@dataclass(frozen=True)
class Admission:
    wait_s: float = 0.0  # sleep this long before reading the photo
    # waiting: the first photo of this burst that waits, tell the user once; refused: tell the user
    # (not more often than REFUSAL_NOTICE_EVERY_S) to send the unanswered photos again later
    notify: bool = False
    refused: bool = False  # too many photos waiting: this one is not read

    @property
    def waits(self) -> bool:
        return self.wait_s > 0


@dataclass
class _Bucket:
    tokens: float  # negative: photos already promised a future token (waiting their turn)
    updated: float
    waiting: int = 0
    refusal_told_at: float | None = None


class PhotoRateLimiter:
    def __init__(self, *, rate_per_s: float = DEFAULT_RATE_PER_S, burst: int = DEFAULT_BURST,
                 max_waiting: int = DEFAULT_MAX_WAITING, max_waiting_total: int = DEFAULT_MAX_WAITING_TOTAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0 or burst < 1 or max_waiting < 0 or max_waiting_total < 0:
            raise ValueError("rate_per_s > 0, burst >= 1, max_waiting >= 0 and max_waiting_total >= 0 are required")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_waiting = max_waiting
        self.max_waiting_total = max_waiting_total
        self._total_waiting = 0
        self._clock = clock
        self._buckets: dict[int, _Bucket] = {}
        self._lock = threading.Lock()

    def admit(self, user_id: int) -> Admission:
        """Take a token for one photo now, or reserve the next free one (Admission.wait_s)."""
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(user_id)
            if bucket is None:
                if len(self._buckets) >= _PRUNE_AT:
                    self._prune(now)
                bucket = self._buckets[user_id] = _Bucket(tokens=float(self.burst), updated=now)
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate_per_s)
            bucket.updated = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return Admission()
            if bucket.waiting >= self.max_waiting or self._total_waiting >= self.max_waiting_total:
                told = bucket.refusal_told_at
                notify = told is None or now - told >= REFUSAL_NOTICE_EVERY_S
                if notify:
                    bucket.refusal_told_at = now
                return Admission(refused=True, notify=notify)
            bucket.tokens -= 1
            bucket.waiting += 1
            self._total_waiting += 1
            return Admission(wait_s=-bucket.tokens / self.rate_per_s, notify=bucket.waiting == 1)

    def done(self, user_id: int, admission: Admission) -> None:
        """A waiting photo had its turn (call it also when the wait was cancelled)."""
        if not admission.waits:
            return
        with self._lock:
            bucket = self._buckets.get(user_id)
            if bucket is not None and bucket.waiting > 0:
                bucket.waiting -= 1
                self._total_waiting -= 1

    def waiting(self, user_id: int) -> int:
        with self._lock:
            bucket = self._buckets.get(user_id)
            return bucket.waiting if bucket is not None else 0

    def total_waiting(self) -> int:
        with self._lock:
            return self._total_waiting

    def _prune(self, now: float) -> None:
        full = [user for user, b in self._buckets.items()
                if b.waiting == 0 and b.tokens + (now - b.updated) * self.rate_per_s >= self.burst]
        for user in full:
            del self._buckets[user]


LIMITER_KEY = "photo_rate_limiter"


def photo_limiter(bot_data: dict[str, object], *, slots: int | None = None) -> PhotoRateLimiter:
    """The Application's limiter (bot_data[LIMITER_KEY]; tests may put a stricter one there), made
    on first use with waiting photos capped at half the Application's ``slots`` (concurrent updates)."""
    limiter = bot_data.get(LIMITER_KEY)
    if not isinstance(limiter, PhotoRateLimiter):
        total = DEFAULT_MAX_WAITING_TOTAL if slots is None else max(1, slots // 2)
        limiter = bot_data[LIMITER_KEY] = PhotoRateLimiter(max_waiting=min(DEFAULT_MAX_WAITING, total),
                                                           max_waiting_total=total)
    return limiter
