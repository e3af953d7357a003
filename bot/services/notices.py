"""Fine-tune outcomes on their way to users: the worker tells (from any thread), the bot sends."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
Send = Callable[[int, dict[str, Any]], None]


class Notices:
    """Given to the services and to the worker at construction; the running bot connects its sender
    (bot.handlers.stats.promotion_notifier) once its event loop exists."""

    def __init__(self) -> None:
        self._send: Send | None = None

    def connect(self, send: Send) -> None:
        self._send = send

    def tell(self, telegram_id: int, summary: dict[str, Any]) -> None:
        """Tell the user how a fine-tune ended: a promotion, or (``summary["promoted"]`` False) that
        their current model was kept (worker.notices.summary_of; every outcome is told once)."""
        if self._send is None:
            log.warning("fine-tune outcome for user %s not told: the bot is not running", telegram_id)
            return
        self._send(telegram_id, summary)
