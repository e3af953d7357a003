"""Operator commands, only for the Telegram ids in ``Settings.admin_ids`` and only in private chats.

To anyone else ``/admin`` does not exist: the update falls through to the unknown-command answer,
so the reply does not even reveal that an admin command is there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from telegram import Update
from telegram.ext import Application, ApplicationHandlerStop, CommandHandler, ContextTypes

from bot.handlers.common import is_private, services_of, user_translator
from bot.ratelimit import photo_limiter

log = logging.getLogger(__name__)
ADMIN_IDS_KEY = "admin_ids"
# Before the other handlers (group 0), so an admin's /admin never reaches "unknown command".
ADMIN_GROUP = -1


def register_admin(application: Application[Any, Any, Any, Any, Any, Any], admin_ids: Iterable[int]) -> None:
    """Add the admin-only commands (the allow-list is read from the settings)."""
    application.bot_data[ADMIN_IDS_KEY] = frozenset(int(i) for i in admin_ids)
    application.add_handler(CommandHandler("admin", on_admin), group=ADMIN_GROUP)


def is_admin(context: ContextTypes.DEFAULT_TYPE, telegram_id: int) -> bool:
    """True when the sender's Telegram id is on the admin allow-list."""
    admins: frozenset[int] = context.bot_data.get(ADMIN_IDS_KEY, frozenset())
    return telegram_id in admins


async def on_admin(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/admin status: service health for allow-listed admins; others get the unknown-command answer."""
    message, user = update.effective_message, update.effective_user
    if message is None or user is None or not is_private(update) or not is_admin(context, user.id):
        if user is not None and context.args:
            log.warning("refused /admin %s from a user who is not an admin", context.args[0][:20])
        return  # falls through to on_unknown_command
    _ = await user_translator(update, context)
    if (context.args or ["status"])[0] != "status":
        await message.reply_text(_("Admin commands: /admin status"))
        raise ApplicationHandlerStop
    numbers = await services_of(context).service_status()
    limiter = photo_limiter(context.bot_data)
    await message.reply_text(_(
        "Service status:\nusers {users}, photos {readings}, digits {samples}, labels {labels}\n"
        "active personal models {active_models}\nfine-tune jobs: queued {jobs_queued}, running {jobs_running}, "
        "failed {jobs_failed}\nphotos waiting for their turn: {waiting}",
        waiting=limiter.total_waiting(), **{k: v for k, v in numbers.items() if k != "label_rows"}))
    raise ApplicationHandlerStop
