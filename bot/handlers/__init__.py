"""Thin update handlers; :func:`register` adds them all to an Application (bot/app.py calls it)."""

from __future__ import annotations

from typing import Any

from telegram.ext import Application, CallbackQueryHandler, CommandHandler, MessageHandler, filters

from bot.handlers import commands, corrections, photo, stats
from bot.handlers.errors import on_error
from bot.keyboards import FORGET_PATTERN, LANGUAGE_PATTERN, READING_PATTERN

# New messages only: an edited caption must not read (and store) the photo again.
_NEW = filters.UpdateType.MESSAGE
_OTHER_MEDIA = (
    filters.Sticker.ALL | filters.VOICE | filters.AUDIO | filters.VIDEO | filters.VIDEO_NOTE
    | filters.LOCATION | filters.CONTACT | filters.POLL | filters.Dice.ALL | filters.VENUE
)


def register(application: Application[Any, Any, Any, Any, Any, Any]) -> None:
    """Add every handler to the application, in the order they must be tried."""
    application.add_handlers([
        CommandHandler("start", commands.on_start),
        CommandHandler("help", commands.on_help),
        CommandHandler("stats", stats.on_stats),
        CommandHandler("lang", commands.on_lang),
        CommandHandler("forget", commands.on_forget),
        CommandHandler("train", commands.on_train),
        MessageHandler(_NEW & filters.COMMAND, commands.on_unknown_command),
        # Animations (GIFs) also carry a document: the photo handler turns them down politely.
        MessageHandler(_NEW & (filters.PHOTO | filters.Document.ALL), photo.on_photo),
        MessageHandler(_NEW & filters.TEXT & ~filters.COMMAND, corrections.on_text),
        MessageHandler(_NEW & _OTHER_MEDIA, photo.on_other_media),
        CallbackQueryHandler(corrections.on_reading_button, pattern=READING_PATTERN),
        CallbackQueryHandler(commands.on_forget_button, pattern=FORGET_PATTERN),
        CallbackQueryHandler(commands.on_language_button, pattern=LANGUAGE_PATTERN),
        CallbackQueryHandler(corrections.on_reading_button),  # anything else: "this button doesn't work"
    ])
    application.add_error_handler(on_error)
