"""Small helpers every handler uses: the services facade and the user's translator."""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from telegram import CallbackQuery, Message, Update
from telegram.error import BadRequest
from telegram.ext import ContextTypes

from bot.i18n import DEFAULT_LANGUAGE, Translator, translator
from bot.services import BotServices

log = logging.getLogger(__name__)
SERVICES_KEY = "services"
TELEGRAM_LANGUAGE_KEY = "telegram_language"
_reading_locks: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()


def services_of(context: ContextTypes.DEFAULT_TYPE) -> BotServices:
    """The BotServices the application was wired with."""
    services: BotServices = context.application.bot_data[SERVICES_KEY]
    return services


async def user_translator(update: Update, context: ContextTypes.DEFAULT_TYPE) -> Translator:
    """The translator for whoever sent this update: their /lang choice, else Telegram's language."""
    user = update.effective_user
    if user is None:
        return translator(DEFAULT_LANGUAGE)
    note_telegram_language(update, context)
    return translator(await services_of(context).language(user.id, user.language_code))


def note_telegram_language(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Keep the sender's Telegram language for messages the user did not ask for (fine-tune outcomes)."""
    user = update.effective_user
    if user is not None and context.user_data is not None and user.language_code:
        context.user_data[TELEGRAM_LANGUAGE_KEY] = user.language_code


def is_private(update: Update) -> bool:
    """True in a one-to-one chat with the bot."""
    return update.effective_chat is not None and update.effective_chat.type == "private"


async def edit_message(target: Message | CallbackQuery, text: str | None, **kwargs: Any) -> None:
    """Edit a message's text and/or keyboard, given the message or the callback query on it (which
    also works when the message is too old to be delivered with the query). "Message is not modified"
    (a repeated tap) is not an error."""
    try:
        if isinstance(target, CallbackQuery):
            if text is None:
                await target.edit_message_reply_markup(**kwargs)
            else:
                await target.edit_message_text(text, **kwargs)
        elif text is None:
            await target.edit_reply_markup(**kwargs)
        else:
            await target.edit_text(text, **kwargs)
    except BadRequest as error:
        if "not modified" not in str(error).lower():
            raise


def reading_lock(reading_id: int) -> asyncio.Lock:
    """One change to a reading at a time (updates run concurrently): two quick taps must not leave
    the message showing the first label while the second one is stored."""
    lock = _reading_locks.get(reading_id)
    if lock is None:
        lock = _reading_locks[reading_id] = asyncio.Lock()
    return lock
