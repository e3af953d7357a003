"""Child process for the replica-kill test: a webhook replica that takes one update into its inbox,
renews its lease, and never finishes handling it (until it is killed).

Usage: python -m tests.reliability.inbox_replica DATABASE_URL OWNER UPDATE_ID LEASE_S MARKER_FILE
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from pathlib import Path

from telegram import Update

from bot.inbox import UpdateInbox
from bot.services import BotServices
from storage.db import session_factory


async def main() -> None:
    url, owner, update_id, lease_s, marker = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), \
        Path(sys.argv[5])
    services = BotServices(sessions=session_factory(url), recognizer=None)  # type: ignore[arg-type]
    inbox = UpdateInbox(services, webhook=True, owner=owner, lease=timedelta(seconds=lease_s))
    await inbox.replay(None)  # starts the heartbeat
    await inbox.queue.put(Update(update_id=update_id))  # written down; the webhook would answer 200
    marker.write_text("handling")
    await asyncio.Event().wait()  # its handler hangs until SIGKILL


if __name__ == "__main__":
    asyncio.run(main())
