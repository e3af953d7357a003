"""Labels from the inline buttons and from text replies to the bot's answer (e.g. ``4271``)."""

from __future__ import annotations

import logging
import unicodedata

from telegram import CallbackQuery, Message, Update
from telegram.ext import ContextTypes

from bot.handlers.common import (
    edit_message,
    is_private,
    note_telegram_language,
    reading_lock,
    services_of,
    user_translator,
)
from bot.i18n import Translator, translator
from bot.keyboards import ReadingAction, digit_picker_keyboard, parse_reading_action, reading_keyboard
from bot.services import BadLabel, DeadButton, NotFound, NotOwner, Shown
from bot.views import ReadingCard, picker_text, reading_text

log = logging.getLogger(__name__)


def _not_owner(_: Translator) -> str:
    return _("Only the person who sent the photo can correct this.")


def _stale(_: Translator) -> str:
    return _("I no longer have this photo (maybe after /forget). Please send it again.")


def _hint(_: Translator) -> str:
    return _("Send me a photo of handwritten digits and I'll read them. /help explains more.")


def _dead_button(_: Translator) -> str:
    return _("This button doesn't work any more. Please send the photo again.")


async def on_reading_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A reading's buttons: confirm, pick a digit to correct, set it, or undo (one transaction)."""
    query = update.callback_query
    if query is None or query.from_user is None:
        return
    action = parse_reading_action(query.data)
    if action is None:
        await query.answer(_dead_button(await user_translator(update, context)), show_alert=True)
        return
    note_telegram_language(update, context)
    async with reading_lock(action.reading_id):
        tapped = await services_of(context).tap(query.from_user.id, query.from_user.language_code, action,
                                                _shown(query), update.update_id)
        _ = translator(tapped.language)
        if tapped.refusal is NotOwner:
            await query.answer(_not_owner(_), show_alert=True)
        elif tapped.refusal is DeadButton:
            await query.answer(_dead_button(_), show_alert=True)
        elif tapped.refusal is NotFound or tapped.card is None:
            if query.message is not None:
                await edit_message(query, None, reply_markup=None)
            await query.answer(_stale(_), show_alert=True)
        else:
            await _show(action, tapped.card, query, _)


def _shown(query: CallbackQuery) -> Shown | None:
    """The message the buttons are on (None: an inline-mode message, which the bot cannot see)."""
    message = query.message
    if message is None:
        return None
    replied = message.reply_to_message if isinstance(message, Message) else None
    sender = replied.from_user.id if replied is not None and replied.from_user is not None else None
    return Shown(chat_id=message.chat.id, message_id=message.message_id, replied_from=sender)


async def _show(action: ReadingAction, card: ReadingCard, query: CallbackQuery, _: Translator) -> None:
    """Edit the message first, then answer the query: once the spinner stops, the message is current."""
    message = query.message
    overview = reading_keyboard(card.reading_id, card.predicted, card.labels, _, true_text=card.true_text)
    if action.kind == "pick" and action.position is not None:
        if message is not None:  # the text says which position the picker is fixing while it is open
            picker = digit_picker_keyboard(card.reading_id, action.position, card.labels[action.position], _)
            await edit_message(query, picker_text(card, action.position, _), reply_markup=picker)
        await query.answer(_("Which digit is #{position}?", position=action.position + 1))
        return
    if action.kind == "back":
        if message is not None:
            await edit_message(query, reading_text(card, _), reply_markup=overview)
        await query.answer()
        return
    if message is not None:
        await edit_message(query, reading_text(card, _), reply_markup=overview)
    if action.kind == "undo":
        await query.answer(_("Undone: nothing is recorded for this photo now."))
    else:
        await query.answer(_("Recorded: {digits}", digits=_recorded(card)))


def _recorded(card: ReadingCard) -> str:
    return "".join(str(d.label if d.label is not None else d.digit) for d in card.digits)


def _cleaned(text: str) -> str:
    # NFKC turns full-width digits (４２７１, common with Chinese input methods) into ASCII ones.
    return "".join(unicodedata.normalize("NFKC", text).split())


async def on_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A text message: a correction when it replies to the bot's answer, else a hint (private chats)."""
    message = update.effective_message
    user = update.effective_user
    if message is None or user is None or message.text is None:
        return
    replied = message.reply_to_message
    to_bot = replied is not None and replied.from_user is not None and replied.from_user.id == context.bot.id
    if not to_bot and not is_private(update):
        return  # group chatter that is not addressed to the bot
    _ = await user_translator(update, context)
    text = _cleaned(message.text)
    if replied is None or not to_bot:
        if text.isascii() and text.isdigit():
            await message.reply_text(_("To correct me, reply to my answer to your photo with the right digits."))
        else:
            await message.reply_text(_hint(_))
        return
    await _correct_by_reply(update, context, message, replied, text, _)


async def _correct_by_reply(update: Update, context: ContextTypes.DEFAULT_TYPE, message: Message,
                            replied: Message, text: str, _: Translator) -> None:
    assert update.effective_user is not None
    services, user_id = services_of(context), update.effective_user.id
    # The answer's own keyboard names its reading; without one (removed, or a server that leaves it
    # out of reply_to_message) look the reading up by the bot message it was attached to.
    reading_id = _reading_id_in(replied)
    card = None
    if reading_id is None:
        card = await services.card_for_reply(user_id, replied.chat_id, replied.message_id)
        reading_id = card.reading_id if card is not None else None
    if reading_id is None and not (text.isascii() and text.isdigit()):
        await message.reply_text(_hint(_))  # chatting with the bot, not correcting it
        return
    if reading_id is None:
        await message.reply_text(_("That message isn't one of my answers to a photo. To correct me, reply "
                                   "to my answer with the right digits."))
        return
    if not (text.isascii() and text.isdigit()):
        await message.reply_text(_("Please reply with digits only, e.g. {example}.",
                                   example=card.text if card is not None else "4271"))
        return
    async with reading_lock(reading_id):
        try:
            card = await services.label_all(user_id, reading_id, text, update.update_id)
        except NotOwner:
            await message.reply_text(_not_owner(_))
            return
        except NotFound:
            await message.reply_text(_stale(_))
            return
        except BadLabel as error:
            await message.reply_text(_("That is too long for one photo; please reply with at most {count} "
                                       "digits.", count=error.longest))
            return
        await edit_message(replied, reading_text(card, _),
                           reply_markup=reading_keyboard(card.reading_id, card.predicted, card.labels, _,
                                                         true_text=card.true_text))
    if card.true_text is not None:  # another number of digits than were read: kept whole
        await message.reply_text(_("Recorded: {digits} (I had read {said}; I'll keep your whole answer)",
                                   digits=card.true_text, said=card.text))
        return
    await message.reply_text(_("Recorded: {digits}", digits=_recorded(card)))


def _reading_id_in(message: Message) -> int | None:
    """The reading a bot answer is about, from its inline keyboard (the bot's own callback_data)."""
    markup = message.reply_markup
    for row in markup.inline_keyboard if markup is not None else ():
        for button in row:
            action = parse_reading_action(button.callback_data if isinstance(button.callback_data, str) else None)
            if action is not None:
                return action.reading_id
    return None
