"""Per-user flood control for photos: a token bucket that delays, never drops.

Each user may send `burst` photos at once and `rate_per_s` photos a second after that. A photo over
the rate is not refused: it waits its turn (the caller sleeps `Admission.wait_s`), and the first
photo of a burst that has to wait tells the user so, once. Only when a user already has
`max_waiting` photos waiting is a photo refused (the user is asked to send it again later), so one
person cannot fill memory or the Application's concurrent-update slots. Nothing is stored for a
photo before its turn comes, so a refused or delayed photo leaves nothing half-written.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_RATE_PER_S = 3.0
DEFAULT_BURST = 20
DEFAULT_MAX_WAITING = 100
_PRUNE_AT = 10_000  # buckets kept before idle (full) ones are dropped


@dataclass(frozen=True)
class Admission:
    wait_s: float = 0.0  # sleep this long before reading the photo
    notify: bool = False  # first photo of this burst that waits: tell the user once
    refused: bool = False  # too many photos waiting: ask the user to send this one again later

    @property
    def waits(self) -> bool:
        return self.wait_s > 0


@dataclass
class _Bucket:
    tokens: float  # negative: photos already promised a future token (waiting their turn)
    updated: float
    waiting: int = 0


class PhotoRateLimiter:
    def __init__(self, *, rate_per_s: float = DEFAULT_RATE_PER_S, burst: int = DEFAULT_BURST,
                 max_waiting: int = DEFAULT_MAX_WAITING, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0 or burst < 1 or max_waiting < 0:
            raise ValueError("rate_per_s > 0, burst >= 1 and max_waiting >= 0 are required")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_waiting = max_waiting
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
            if bucket.waiting >= self.max_waiting:
                return Admission(refused=True)
            bucket.tokens -= 1
            bucket.waiting += 1
            return Admission(wait_s=-bucket.tokens / self.rate_per_s, notify=bucket.waiting == 1)

    def done(self, user_id: int, admission: Admission) -> None:
        """A waiting photo had its turn (call it also when the wait was cancelled)."""
        if not admission.waits:
            return
        with self._lock:
            bucket = self._buckets.get(user_id)
            if bucket is not None and bucket.waiting > 0:
                bucket.waiting -= 1

    def waiting(self, user_id: int) -> int:
        with self._lock:
            bucket = self._buckets.get(user_id)
            return bucket.waiting if bucket is not None else 0

    def total_waiting(self) -> int:
        with self._lock:
            return sum(b.waiting for b in self._buckets.values())

    def _prune(self, now: float) -> None:
        full = [user for user, b in self._buckets.items()
                if b.waiting == 0 and b.tokens + (now - b.updated) * self.rate_per_s >= self.burst]
        for user in full:
            del self._buckets[user]


LIMITER_KEY = "photo_rate_limiter"


def photo_limiter(bot_data: dict[str, object]) -> PhotoRateLimiter:
    """The Application's limiter (bot_data[LIMITER_KEY]; tests may put a stricter one there)."""
    limiter = bot_data.get(LIMITER_KEY)
    if not isinstance(limiter, PhotoRateLimiter):
        limiter = bot_data[LIMITER_KEY] = PhotoRateLimiter()
    return limiter
