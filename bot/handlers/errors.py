"""The one error handler, and the redaction that keeps the bot token out of every log line.

The token is taken out of each log record as it is created (a record factory), before any logger
filter or handler sees it: a handler added after start-up (by a library, a debugger, a test) never
gets the token either. The filter on the root handlers stays as a second line."""

from __future__ import annotations

import logging
import re
import traceback
from typing import Any
from urllib.parse import quote

from telegram import Update
from telegram.error import Forbidden
from telegram.ext import ContextTypes

from bot.i18n import resolve_language, translator

log = logging.getLogger(__name__)
REDACTED = "<redacted>"
# Anything shaped like a bot token (digits:35 url-safe chars, the colon maybe URL-encoded as in
# file download URLs), also when it is not the configured one.
_TOKEN_SHAPE = re.compile(r"\b\d{5,}(?::|%3[Aa])[A-Za-z0-9_-]{30,}\b")


class RedactTokenFilter(logging.Filter):
    """Replaces the bot token (and anything shaped like one) in messages and tracebacks."""

    def __init__(self, token: str | None) -> None:
        super().__init__()
        self.token = token
        self._forms = [quote(token, safe=""), token.replace(":", "%3a"), token] if token else []

    def redact(self, text: str) -> str:
        for form in self._forms:
            text = text.replace(form, REDACTED)
        return _TOKEN_SHAPE.sub(REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit: a handler would print them raw with its error
            message = f"{record.msg} (arguments: {record.args!r})"
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


class _RedactingRecordFactory:
    """The log record factory: each record leaves it redacted by ``redactor`` (the latest installed),
    its message formatted, and its traceback formatted into ``exc_text`` (which formatters print
    instead of formatting ``exc_info`` again)."""

    def __init__(self) -> None:
        self.base: Any = logging.getLogRecordFactory()
        self.redactor: RedactTokenFilter | None = None

    def install(self, redactor: RedactTokenFilter) -> None:
        self.redactor = redactor
        current = logging.getLogRecordFactory()
        if current is not self:  # first time, or replaced since: wrap whatever is there now
            self.base = current
            logging.setLogRecordFactory(self)

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = self.base(*args, **kwargs)
        if self.redactor is not None:
            self.redactor.filter(record)
        return record


_RECORD_FACTORY = _RedactingRecordFactory()


def install_redaction(token: str | None) -> RedactTokenFilter:
    """Redact every log record as it is created (any logger, any handler, added now or later), and
    attach the filter to every root handler too."""
    redactor = RedactTokenFilter(token)
    _RECORD_FACTORY.install(redactor)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in root.handlers:
        handler.addFilter(redactor)
    # httpx logs every request URL, and Bot API URLs contain the token; the others are chatty.
    for name in ("httpx", "alembic", "apscheduler"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return redactor


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The one global error handler: log with the token redacted, tell the user to try again."""
    error = context.error
    if isinstance(error, Forbidden):
        log.info("the user blocked the bot or left the chat: %s", error)
        return
    update_id = update.update_id if isinstance(update, Update) else None
    log.error("update %s failed", update_id, exc_info=error)
    if not isinstance(update, Update):
        return
    # The user's Telegram language, not the stored one: the database may be what failed.
    user = update.effective_user
    _ = translator(resolve_language(user.language_code if user is not None else None))
    text = _("Sorry, something went wrong. Please try again.")
    try:
        if update.callback_query is not None:
            await update.callback_query.answer(text, show_alert=True)
        elif update.effective_chat is not None:
            await context.bot.send_message(update.effective_chat.id, text)
    except Exception as exc:  # the Bot API itself may be what failed; never raise from here
        log.warning("could not tell the user about the error: %s", exc.__class__.__name__)
