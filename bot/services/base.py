"""What every part of the bot's services shares: the database, and the rule for update-id records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from storage.db import SessionFactory


class ServicesBase:
    sessions: SessionFactory
    # how long a processed-update marker means "already handled" (bot/inbox.py's retention; at least
    # the 24 h that Telegram keeps an update: update ids are reused after a week without any)
    update_retention: timedelta


def stale_before(retention: timedelta) -> datetime:
    """Update-id records older than this belong to an earlier update with the same id: Telegram keeps
    an update at most 24 hours (so never less than a day, whatever the retention)."""
    return datetime.now(UTC) - max(retention, timedelta(days=1))
