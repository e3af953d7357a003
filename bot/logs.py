"""Log set-up: text lines (default) or one JSON object a line (``DIGITBOT_LOG_FORMAT=json``,
python-json-logger), each carrying the update being handled and who sent it, where known.

The update id and the sender are context variables set first thing for every update (an
Application-level handler in group :data:`CONTEXT_GROUP`, see :func:`register_log_context`); each
update is handled in its own task, so concurrent updates never mix. The sender is logged as
``user``: the first 16 hex digits of sha256(salt:telegram id), the salt derived from the bot token
(the same on every replica of one deployment, different between deployments; a new token gives new
hashes). Telegram ids are not secret enough to log unsalted: the id space is small.

The bot token stays redacted (bot/handlers/errors.py: the record factory redacts each record's
message and traceback text as the record is created); the JSON formatter prints that redacted
traceback rather than formatting the exception again."""

from __future__ import annotations

import hashlib
import logging
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.json import JsonFormatter
from telegram import Update
from telegram.ext import Application, TypeHandler

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"
CONTEXT_GROUP = -1000  # before every other handler group

UPDATE_ID: ContextVar[int | None] = ContextVar("digitbot_update_id", default=None)
USER: ContextVar[str | None] = ContextVar("digitbot_user", default=None)


def user_hash(telegram_id: int, salt: str) -> str:
    return hashlib.sha256(f"{salt}:{telegram_id}".encode()).hexdigest()[:16]


def log_salt(token: str) -> str:
    """The per-deployment salt for :func:`user_hash` (from the bot token; never the token itself)."""
    return hashlib.sha256(f"digitbot-log-user:{token}".encode()).hexdigest()


class UpdateContextFilter(logging.Filter):
    """Adds ``update_id`` and ``user`` (hashed) to records logged while an update is handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        update_id, user = UPDATE_ID.get(), USER.get()
        if update_id is not None and not hasattr(record, "update_id"):
            record.update_id = update_id
        if user is not None and not hasattr(record, "user"):
            record.user = user
        return True


class RedactedJsonFormatter(JsonFormatter):
    """JSON lines; a traceback already formatted (and redacted) into ``exc_text`` is printed as is."""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and record.exc_text:
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None})
        return super().format(record)


def json_formatter() -> RedactedJsonFormatter:
    return RedactedJsonFormatter(JSON_FIELDS, rename_fields={"levelname": "level", "name": "logger"})


def configure_logging(log_format: str = "text", *, level: int = logging.INFO) -> None:
    """Root logging to stderr as text or JSON lines, with the update context filter. Root handlers
    already there (set up by the CLI, a test runner) are kept; in JSON mode plain stream handlers
    switch to the JSON formatter. Call before :func:`bot.handlers.errors.install_redaction`."""
    root = logging.getLogger()
    if not root.handlers:
        stream = logging.StreamHandler()
        stream.setFormatter(logging.Formatter(TEXT_FORMAT))
        root.addHandler(stream)
        root.setLevel(level)
    for handler in root.handlers:
        if log_format == "json" and type(handler) is logging.StreamHandler:
            handler.setFormatter(json_formatter())
        if not any(isinstance(f, UpdateContextFilter) for f in handler.filters):
            handler.addFilter(UpdateContextFilter())


def register_log_context(application: Application[Any, Any, Any, Any, Any, Any], token: str) -> None:
    """Set the log context (update id, hashed sender) for each update before any handler runs."""
    salt = log_salt(token)

    async def set_context(update: Update, _context: object) -> None:
        UPDATE_ID.set(update.update_id)
        user = update.effective_user
        USER.set(user_hash(user.id, salt) if user is not None else None)

    application.add_handler(TypeHandler(Update, set_context), group=CONTEXT_GROUP)
