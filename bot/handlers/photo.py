"""Photos and images sent as files in; the digits read, with confidence and a keyboard, out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import unicodedata
from dataclasses import dataclass

from telegram import Message, Update
from telegram.constants import ChatAction
from telegram.error import BadRequest, TelegramError
from telegram.ext import ContextTypes

from bot.handlers.common import is_private, services_of, user_translator
from bot.i18n import Translator
from bot.keyboards import reading_keyboard
from bot.ratelimit import photo_limiter
from bot.views import reading_text
from core.vision.preprocess import MAX_PIXELS

log = logging.getLogger(__name__)
MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024  # the Bot API's getFile limit
_REJECTED_IMAGE_TYPES = frozenset({"image/svg+xml"})
_TYPING_AFTER_S = 0.4
_BUSY_AT = 12  # photos in flight from one user before they are told (an album holds up to 10)


@dataclass(frozen=True)
class _Incoming:
    file_id: str
    file_unique_id: str
    size: int | None


def _is_image_type(mime_type: str | None) -> bool:
    if mime_type is None or mime_type == "application/octet-stream":
        return True  # unknown: let the decoder decide
    return mime_type.startswith("image/") and mime_type not in _REJECTED_IMAGE_TYPES


def _pick_file(message: Message) -> _Incoming | str:
    """The file to read, or the reason ("not_an_image" | "too_large") it cannot be read."""
    if message.photo:
        fitting = [p for p in message.photo if p.file_size is None or p.file_size <= MAX_DOWNLOAD_BYTES]
        if not fitting:
            return "too_large"
        best = max(fitting, key=lambda p: (p.width * p.height, p.file_size or 0))
        return _Incoming(best.file_id, best.file_unique_id, best.file_size)
    document = message.document
    if document is None or message.animation is not None or not _is_image_type(document.mime_type):
        return "not_an_image"
    if document.file_size is not None and document.file_size > MAX_DOWNLOAD_BYTES:
        return "too_large"
    return _Incoming(document.file_id, document.file_unique_id, document.file_size)


def problem_text(status: str, _: Translator, **values: int) -> str:
    """The friendly answer for a photo that could not be read, in the user's language."""
    texts = {
        "not_an_image": _("That doesn't look like an image I can read. Please send a photo "
                          "(JPEG or PNG) of handwritten digits."),
        # Too many bytes, or too many pixels (core.vision.preprocess; e.g. a tiny decompression bomb).
        "too_large": _("That image is too large for me (the limit is 20 MB and {megapixels} megapixels). "
                       "Please send a smaller image.", megapixels=MAX_PIXELS // 1_000_000),
        "no_digit": _("I couldn't find any digits in this photo. Try a close, well-lit photo of dark "
                      "digits on light paper."),
        "too_many_digits": _("That's too many digits for one photo. Please photograph at most 12 digits "
                             "at a time."),
        "quota": _("You have stored the maximum number of digits ({limit}). Use /forget to start over.",
                   limit=values.get("limit", 0)),
    }
    return texts.get(status, texts["not_an_image"])


async def on_photo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A photo or image document: read the digits and answer with confirm/correct buttons. In groups,
    only from users who started the bot in a private chat, and nothing but images is answered."""
    message = update.effective_message
    user = update.effective_user
    if message is None or user is None:
        return
    incoming = _pick_file(message)
    if not is_private(update) and (incoming == "not_an_image"
                                   or not await services_of(context).reads_in_groups(user.id)):
        return  # in groups: other documents, and members who never started the bot in private (consent)
    _ = await user_translator(update, context)
    if isinstance(incoming, str):
        await message.reply_text(problem_text(incoming, _), do_quote=True)
        return
    limiter = photo_limiter(context.bot_data, slots=context.application.update_processor.max_concurrent_updates)
    admission = limiter.admit(user.id)
    if admission.refused:  # not read; told once in a while, not per photo (bot/ratelimit.py)
        if admission.notify:
            await message.reply_text(_("Too many photos are waiting, so I'm not reading the ones you send now. "
                                       "Please send the photos I don't answer again in a minute."), do_quote=True)
        return
    waiting = context.user_data.setdefault("photos_waiting", 0) if context.user_data is not None else 0
    if context.user_data is not None:
        context.user_data["photos_waiting"] = waiting + 1
    already_told = limiter.waiting(user.id) > 0 and not admission.notify
    if admission.notify or (waiting + 1 == _BUSY_AT and not already_told):
        await message.reply_text(_("You're sending photos faster than I can read them; "
                                   "I'll answer each one in turn."))
    try:
        if admission.waits:  # over the user's rate: wait for their turn (bot/ratelimit.py)
            await asyncio.sleep(admission.wait_s)
        await _read_and_reply(update, context, message, incoming, _)
    finally:
        limiter.done(user.id, admission)
        if context.user_data is not None:
            context.user_data["photos_waiting"] = max(0, context.user_data.get("photos_waiting", 1) - 1)


async def _read_and_reply(update: Update, context: ContextTypes.DEFAULT_TYPE, message: Message,
                          incoming: _Incoming, _: Translator) -> None:
    assert update.effective_user is not None
    # "typing…" only when the answer is slow: it costs a request against the Bot API rate limits.
    typing = asyncio.create_task(_typing_after(message, _TYPING_AFTER_S))
    try:
        await _download_read_reply(update, context, message, incoming, _)
    finally:
        typing.cancel()
        await asyncio.gather(typing, return_exceptions=True)


async def _typing_after(message: Message, delay_s: float) -> None:
    await asyncio.sleep(delay_s)
    with contextlib.suppress(TelegramError):
        await message.reply_chat_action(ChatAction.TYPING)


async def _download_read_reply(update: Update, context: ContextTypes.DEFAULT_TYPE, message: Message,
                               incoming: _Incoming, _: Translator) -> None:
    assert update.effective_user is not None
    try:
        telegram_file = await context.bot.get_file(incoming.file_id)
        data = bytes(await telegram_file.download_as_bytearray())
    except BadRequest as error:
        if "too big" in str(error).lower():
            await message.reply_text(problem_text("too_large", _), do_quote=True)
            return
        raise
    if len(data) > MAX_DOWNLOAD_BYTES:
        await message.reply_text(problem_text("too_large", _), do_quote=True)
        return
    services = services_of(context)
    outcome = await services.read_photo(
        update_id=update.update_id, telegram_id=update.effective_user.id, chat_id=message.chat_id,
        file_id=incoming.file_id, file_unique_id=incoming.file_unique_id, data=data)
    if outcome.status == "duplicate":
        log.info("update %s was already processed; not storing it again", update.update_id)
        return
    if outcome.card is None:
        await message.reply_text(problem_text(outcome.status, _, limit=outcome.quota or 0), do_quote=True)
        return
    card = outcome.card
    caption = _caption_digits(message.caption)
    if caption is not None and len(caption) == len(card.digits):  # "4271" as caption: labelled at once
        card = await services.label_all(card.owner_telegram_id, card.reading_id, caption, update_id=None)
    sent = await message.reply_text(
        reading_text(card, _), do_quote=True,
        reply_markup=reading_keyboard(card.reading_id, card.predicted, card.labels, _, true_text=card.true_text))
    try:
        await services.attach_message(card.reading_id, sent.chat_id, sent.message_id)
    except Exception as error:  # the answer is out and its buttons work: no "try again" (that would store
        # the photo twice); only a text reply to this answer will not be taken as a correction
        log.warning("reading %s was answered but not linked to its message (%s)", card.reading_id,
                    error.__class__.__name__)


def _caption_digits(caption: str | None) -> str | None:
    """The digits of a caption that is only digits (spaces and full-width digits allowed)."""
    text = "".join(unicodedata.normalize("NFKC", caption or "").split())
    return text if text and text.isascii() and text.isdigit() else None


async def on_other_media(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Stickers, voice, video, locations...: say what the bot can read (in private chats)."""
    message = update.effective_message
    if message is None or not is_private(update):
        return
    _ = await user_translator(update, context)
    await message.reply_text(problem_text("not_an_image", _), do_quote=True)
