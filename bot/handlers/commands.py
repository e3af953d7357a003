"""/start, /help, /lang, /forget, /train, unknown commands, and the command menu (setMyCommands)."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass

from telegram import Bot, BotCommand, Update
from telegram.error import Forbidden, TelegramError
from telegram.ext import ContextTypes

from bot.handlers.common import TELEGRAM_LANGUAGE_KEY, edit_message, is_private, services_of, user_translator
from bot.i18n import LANGUAGE_NAMES, SUPPORTED_LANGUAGES, Translator, resolve_language, translator
from bot.keyboards import forget_keyboard, language_keyboard, parse_forget_action, parse_language_action
from storage.records import FinetuneStatus

log = logging.getLogger(__name__)
_forget_locks: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()
# /forget confirmations (chat id, message id) edited to "Done: ... (N records)", so that a second tap
# on one of them leaves that count showing instead of replacing it with "Already done".
_confirmations_done: OrderedDict[tuple[int, int], None] = OrderedDict()
_CONFIRMATIONS_REMEMBERED = 4096
# /train watches the job it queued and answers with the outcome: a promotion is announced by the
# worker (bot/handlers/stats.py send_promotion); a rejection or a final failure is told here.
TRAIN_WATCH_EVERY_S = 5.0
TRAIN_WATCH_FOR_S = 3 * 3600.0


def N_(message: str) -> str:
    """Marks a message for extraction; it is translated where it is shown."""
    return message


# In groups, photos are read only from users who started the bot in private (bot/handlers/photo.py).
GROUPS_NOTE = N_("In groups I read only photos (and image files) from people who have sent me /start in a "
                 "private chat; I ignore everyone else's photos and any other files there, and store nothing "
                 "about them.")

COMMANDS: list[tuple[str, str]] = [
    ("start", N_("what I do and what I store")),
    ("help", N_("how to use me")),
    ("stats", N_("how often I'm right for you, with a chart")),
    ("train", N_("fine-tune your personal model now")),
    ("lang", N_("choose the language (English / 中文)")),
    ("forget", N_("delete everything I stored about you")),
]


async def register_commands(bot: Bot) -> None:
    """setMyCommands and the bot's descriptions: English for everyone, plus each translation for its
    Telegram language."""
    for language in SUPPORTED_LANGUAGES:
        _ = translator(language)
        code = None if language == "en" else language.split("_")[0]  # the Bot API takes "zh", not "zh_CN"
        commands = [BotCommand(name, _(description)) for name, description in COMMANDS]
        await bot.set_my_commands(commands, language_code=code)
        try:  # the profile texts are a nicety; a server without these methods still gets a working bot
            await bot.set_my_short_description(
                _("I read handwritten digits from photos and learn your handwriting."), language_code=code)
            await bot.set_my_description(
                _("Send me a photo of handwritten digits: I read them, you confirm or correct me, and I learn "
                  "your handwriting. /forget deletes everything I stored about you."), language_code=code)
        except TelegramError as error:
            log.warning("setMyDescription failed: %s", error)


async def on_start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/start: greet the user and say how to send a photo; in a private chat, also their consent to
    have the photos they post in groups read."""
    if update.effective_message is None:
        return
    if update.effective_user is not None and is_private(update):  # consent to be read in groups
        await services_of(context).start_private(update.effective_user.id)
    _ = await user_translator(update, context)
    await update.effective_message.reply_text(
        _("Hi! I read handwritten digits from photos and learn your handwriting from your corrections.\n\n"
          "Send me a photo of one digit or a row of digits on paper (or an image sent as a file). I reply "
          "with what I read and how sure I am. Tap ✅ if I'm right or the right digit if I'm wrong, or "
          "reply to my answer with the right digits (e.g. 4271).\n\n"
          "What I store and why: the small 28×28 crops of your digits and your photo's Telegram file id, "
          "what I answered and which model answered, and your confirmations and corrections. I use them "
          "only to show you how often I'm right (/stats) and to fine-tune a personal copy of my model on "
          "your handwriting, which I switch on only when it does better for you. /forget deletes all of "
          "it at any time.") + "\n\n" + _(GROUPS_NOTE)
    )


async def on_help(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/help: what the bot does and its commands, in the user's language."""
    if update.effective_message is None:
        return
    _ = await user_translator(update, context)
    lines = [_("Send a photo of handwritten digits (or an image file up to 20 MB) and I'll read it."),
             _("Correct me with the buttons under my answer, or reply to it with the right digits."),
             _("Already know the digits? Send them as the photo's caption (e.g. 4271) and I record them "
               "straight away."), _(GROUPS_NOTE), ""]
    lines += [f"/{name} — {_(description)}" for name, description in COMMANDS]
    await update.effective_message.reply_text("\n".join(lines))


async def on_lang(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/lang [language]: switch to it directly, or offer the languages as buttons."""
    message, user = update.effective_message, update.effective_user
    if message is None or user is None:
        return
    _ = await user_translator(update, context)
    if context.args:
        choice = context.args[0].strip()
        language = choice if choice in LANGUAGE_NAMES else next(
            (code for code, name in LANGUAGE_NAMES.items() if name == choice), None)
        if language is None and choice.replace("_", "-").lower().split("-")[0] in {"en", "zh"}:
            language = resolve_language(choice)
        if language is not None:
            await services_of(context).set_language(user.id, language)
            await message.reply_text(translator(language)("Language set to English."))
            return
    await message.reply_text(_("Choose your language:"), reply_markup=language_keyboard(_.language))


async def on_language_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A language button: store the choice and answer in that language."""
    query = update.callback_query
    if query is None:
        return
    language = parse_language_action(query.data)
    if language is None:
        _ = await user_translator(update, context)
        await query.answer(_("This button doesn't work any more."), show_alert=True)
        return
    await services_of(context).set_language(query.from_user.id, language)
    _ = translator(language)
    if query.message is not None:
        await edit_message(query, _("Language set to English."), reply_markup=None)
    await query.answer(_("Language set to English."))


async def on_forget(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/forget: ask for confirmation before deleting everything about the user."""
    message, user = update.effective_message, update.effective_user
    if message is None or user is None:
        return
    _ = await user_translator(update, context)
    await message.reply_text(
        _("This deletes everything I stored about you: your digits, labels, statistics and personal "
          "model. It cannot be undone. Are you sure?"),
        reply_markup=forget_keyboard(user.id, _),
    )


async def on_forget_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The /forget confirmation buttons: delete everything, or keep it."""
    query = update.callback_query
    if query is None:
        return
    _ = await user_translator(update, context)
    parsed = parse_forget_action(query.data)
    if parsed is None:
        await query.answer(_("This button doesn't work any more."), show_alert=True)
        return
    confirmed, asker = parsed
    if asker != query.from_user.id:
        await query.answer(_("Only the person who asked can answer this. Send /forget yourself to delete "
                             "your own data."), show_alert=True)
        return
    if not confirmed:
        if query.message is not None:
            await edit_message(query, _("Cancelled. Nothing was deleted."), reply_markup=None)
        await query.answer()
        return
    async with _forget_lock(asker):  # a double tap: the second press waits for the first one's answer
        deleted = await services_of(context).forget(asker)
        log.info("forgot a user: %d rows deleted", deleted)
        confirmation = (query.message.chat.id, query.message.message_id) if query.message is not None else None
        if deleted == 0:  # nothing was stored (any more): a second press, or /forget again afterwards
            already = _("Already done: nothing is stored about you.")
            if confirmation is not None and confirmation not in _confirmations_done:  # keep a real count shown
                await edit_message(query, already, reply_markup=None)
            await query.answer(already)
            return
        if confirmation is not None:
            await edit_message(query, _("Done: everything I stored about you is deleted ({rows} records). "
                                        "Send a photo any time to start again.", rows=deleted),
                               reply_markup=None)
            _confirmations_done[confirmation] = None
            while len(_confirmations_done) > _CONFIRMATIONS_REMEMBERED:
                _confirmations_done.popitem(last=False)
        await query.answer(_("Deleted."))


def _forget_lock(telegram_id: int) -> asyncio.Lock:
    """One /forget of a user at a time (updates run concurrently)."""
    lock = _forget_locks.get(telegram_id)
    if lock is None:
        lock = _forget_locks[telegram_id] = asyncio.Lock()
    return lock


async def on_train(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/train: queue a personal fine-tune now if the user has enough new labels."""
    message, user = update.effective_message, update.effective_user
    if message is None or user is None:
        return
    _ = await user_translator(update, context)
    outcome = await services_of(context).request_finetune(user.id)
    minutes = max(1, round(outcome.interval_s / 60))
    texts = {
        "queued": _("Fine-tune requested: I'm training a personal model on your {labels} labelled digits and "
                    "will tell you how it went (it replaces your current model only if it does better).",
                    labels=outcome.labels),
        "already_queued": _("A fine-tune for you is already queued or running; I'll tell you how it went."),
        "not_enough_labels": _("I need at least {needed} labelled digits before I can fine-tune; you have "
                               "{labels}. Send photos and confirm or correct my answers.",
                               needed=outcome.needed, labels=outcome.labels),
        "unknown_user": _("I have no labelled digits from you yet. Send photos and confirm or correct my "
                          "answers, then ask again."),
        "no_new_labels": _("Your current model was trained on all your labels already; correct or confirm a few "
                           "more digits and ask again."),
    }
    await message.reply_text(texts.get(outcome.reason, _(
        "Fine-tuning runs automatically about every {minutes} min once you have enough new labels.",
        minutes=minutes)))
    if outcome.reason in ("queued", "already_queued") and outcome.job_id is not None:
        watch_finetune(context, _TrainWatch(message.chat_id, user.id, outcome.job_id,
                                            time.monotonic() + TRAIN_WATCH_FOR_S))


@dataclass(frozen=True)
class _TrainWatch:
    chat_id: int
    telegram_id: int
    job_id: int
    until: float  # time.monotonic() after which we stop watching


def watch_finetune(context: ContextTypes.DEFAULT_TYPE, watch: _TrainWatch) -> None:
    """Check the job every TRAIN_WATCH_EVERY_S and tell the user how it ended (once per job)."""
    job_queue = context.job_queue
    if job_queue is None:
        log.warning("no JobQueue: the outcome of fine-tune job %s is not told", watch.job_id)
        return
    name = f"train-watch:{watch.chat_id}:{watch.job_id}"
    if job_queue.get_jobs_by_name(name):
        return
    job_queue.run_repeating(_check_finetune, interval=TRAIN_WATCH_EVERY_S, first=TRAIN_WATCH_EVERY_S,
                            data=watch, name=name)


async def _check_finetune(context: ContextTypes.DEFAULT_TYPE) -> None:
    job = context.job
    assert job is not None
    watch: _TrainWatch = job.data  # type: ignore[assignment]
    status = await services_of(context).finetune_status(watch.telegram_id, watch.job_id)
    if status is None:  # the job is gone (the user used /forget)
        job.schedule_removal()
        return
    if not status.done:
        if time.monotonic() > watch.until:
            log.warning("fine-tune job %s still %s; no longer watched", watch.job_id, status.state)
            job.schedule_removal()
        return
    job.schedule_removal()
    if status.state == "succeeded":
        return  # the worker's outbox tells every outcome once, promoted or kept (stats.send_promotion)
    seen = context.application.user_data.get(watch.telegram_id, {}).get(TELEGRAM_LANGUAGE_KEY)
    _ = translator(await services_of(context).language(watch.telegram_id, seen))
    if status.state == "failed":
        text = _("The fine-tune you asked for failed, so nothing changed: your current model keeps answering. "
                 "Try /train again later.")
    else:
        text = finetune_outcome_text(status, _)
    try:
        await context.bot.send_message(watch.chat_id, text)
    except Forbidden:
        log.info("fine-tune outcome not told: user %s blocked the bot", watch.telegram_id)


def _percent(value: float | None) -> str:
    return f"{value:.0%}" if value is not None else "—"


def finetune_outcome_text(status: FinetuneStatus, _: Translator) -> str:
    """A finished fine-tune that did not promote: not better, the current model is kept."""
    kept = (_("your personal model v{version}", version=status.active_version) if status.active_version is not None
            else _("the base model"))
    if status.accuracy_before is not None and status.accuracy_after is not None:
        return _("Fine-tune finished: the new model was not better ({after} in a cross-check on your digits, "
                 "{before} before), so I kept {kept}.", after=_percent(status.accuracy_after),
                 before=_percent(status.accuracy_before), kept=kept)
    return _("Fine-tune finished: the new model was not better, so I kept {kept}.", kept=kept)


async def on_unknown_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Any other command: say so and point to /help."""
    message = update.effective_message
    if message is None or message.text is None:
        return
    command = message.text.split()[0]
    if not is_private(update) and not command.lower().endswith("@" + (context.bot.username or "").lower()):
        return  # in groups, only commands addressed to this bot
    _ = await user_translator(update, context)
    await message.reply_text(_("I don't know that command. /help lists what I can do."))
