"""Optional flood control like Telegram's: too many messages answer 429 with retry_after.

Telegram does not publish its exact algorithm; its FAQ gives the orders of magnitude used here
as token buckets: about 1 message per second in one chat (short bursts allowed), 20 messages per
minute in a group, about 30 messages per second overall. Off unless the server is started with
`flood_limits=FloodLimits()`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from emulator.state import BotApiError


@dataclass
class FloodLimits:
    per_chat_per_s: float = 1.0
    chat_burst: int = 3
    group_per_minute: float = 20.0
    overall_per_s: float = 30.0


@dataclass
class _Bucket:
    capacity: float
    rate: float  # tokens per second
    tokens: float = -1.0
    stamp: float = field(default_factory=time.monotonic)

    def take(self) -> float:
        """0 when a token was taken, else the seconds until one is available."""
        now = time.monotonic()
        if self.tokens < 0:
            self.tokens = self.capacity
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class FloodControl:
    def __init__(self, limits: FloodLimits) -> None:
        self.limits = limits
        self._overall = _Bucket(limits.overall_per_s, limits.overall_per_s)
        self._chats: dict[int, _Bucket] = {}

    def check(self, chat_id: int) -> None:
        """Raise Telegram's 429 when the bot sends too fast to this chat or overall."""
        limits = self.limits
        if chat_id not in self._chats:
            self._chats[chat_id] = (_Bucket(limits.group_per_minute, limits.group_per_minute / 60) if chat_id < 0
                                    else _Bucket(limits.chat_burst, limits.per_chat_per_s))
        wait = max(self._chats[chat_id].take(), self._overall.take())
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            raise BotApiError(429, f"Too Many Requests: retry after {retry_after}", retry_after=retry_after)
