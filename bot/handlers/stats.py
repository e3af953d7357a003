"""/stats (text, the last fine-tune, and a chart image) and the notification of a fine-tune's outcome
("your personal model went live", or "kept your current model")."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from telegram import Update
from telegram.error import Forbidden
from telegram.ext import Application, ContextTypes

from bot.charts import AccuracyPoint, ChartData, render_stats_chart
from bot.handlers.common import TELEGRAM_LANGUAGE_KEY, services_of, user_translator
from bot.i18n import Translator, translator
from bot.services import confusion_matrix, promotions
from bot.views import stats_text
from storage.records import FinetuneStatus

log = logging.getLogger(__name__)


async def on_stats(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/stats: the user's accuracy before and after personalisation, with a chart."""
    message, user = update.effective_message, update.effective_user
    if message is None or user is None:
        return
    _ = await user_translator(update, context)
    card, stats = await services_of(context).stats(user.id)
    last = await services_of(context).finetune_status(user.id)
    text = stats_text(card, _)
    if last is not None:
        text += "\n" + last_finetune_text(last, _)
    await message.reply_text(text)
    if card.labelled == 0:
        return
    chart = ChartData(
        points=[AccuracyPoint(b.end, b.count, b.accuracy, b.base_accuracy) for b in stats.buckets],
        promotions=promotions(stats),
        confusion=confusion_matrix(stats),
    )
    png = await asyncio.to_thread(render_stats_chart, chart, _)
    await message.reply_photo(png, caption=_("Accuracy over time (your personal model's promotions marked) "
                                             "and what you wrote vs what I answered."))


def last_finetune_text(status: FinetuneStatus, _: Translator) -> str:
    """/stats' line about the user's latest fine-tune and how it ended."""
    when = (status.finished_at or status.requested_at).strftime("%Y-%m-%d %H:%M UTC")
    details = {"when": when, "version": status.version if status.version is not None else "?",
               "before": _percent(status.accuracy_before), "after": _percent(status.accuracy_after)}
    if status.state == "queued":
        return _("Last fine-tune: asked {when}, waiting to run.", **details)
    if status.state == "running":
        return _("Last fine-tune: asked {when}, training now.", **details)
    if status.state == "failed":
        return _("Last fine-tune ({when}): failed; your model did not change.", **details)
    if status.promoted:
        return _("Last fine-tune ({when}): v{version} went live ({after} in a cross-check on your digits, "
                 "{before} before).", **details)
    kept = (_("your personal model v{version}", version=status.active_version) if status.active_version is not None
            else _("the base model"))
    return _("Last fine-tune ({when}): v{version} was not better ({after} in a cross-check on your digits, {before} "
             "before), so I kept {kept}.", kept=kept, **details)


def _percent(value: Any) -> str:
    try:
        return f"{float(value):.0%}"
    except (TypeError, ValueError):
        return "—"


async def send_promotion(context: ContextTypes.DEFAULT_TYPE) -> None:
    """JobQueue callback: tell a user how their fine-tune ended (a better model went live, or the
    current one was kept)."""
    job = context.job
    assert job is not None
    telegram_id: int = job.data[0]  # type: ignore[index]
    summary: dict[str, Any] = job.data[1]  # type: ignore[index]
    seen = context.application.user_data.get(telegram_id, {}).get(TELEGRAM_LANGUAGE_KEY)
    language = await services_of(context).language(telegram_id, seen)
    text = outcome_text(summary, translator(language))
    try:
        await context.bot.send_message(telegram_id, text)
    except Forbidden:
        log.info("fine-tune outcome not told: user %s blocked the bot", telegram_id)


def outcome_text(summary: dict[str, Any], _: Translator) -> str:
    """The message about one fine-tune's outcome (``summary``: worker.notices.summary_of)."""
    details = {"version": summary.get("version") or "?", "after": _percent(summary.get("accuracy_after")),
               "before": _percent(summary.get("accuracy_before")), "labels": summary.get("labels", "?"),
               "mnist": _percent(summary.get("mnist_accuracy")), "digits": summary.get("heldout_samples") or "?"}
    if summary.get("promoted", True):
        if details["after"] == details["before"]:  # promoted on a tie: as accurate, and surer where right
            return _("🎉 Your personal model v{version} is live! In a cross-check on your digits it's as accurate as "
                     "before ({after}) and surer of its answers, trained on {labels} of your labels, and it "
                     "still reads standard digits ({mnist} on MNIST). /stats shows the details.", **details)
        return _("🎉 Your personal model v{version} is live! In a cross-check on your digits it's right {after} of the "
                 "time (before: {before}), trained on {labels} of your labels, and it still reads standard "
                 "digits ({mnist} on MNIST). /stats shows the details.", **details)
    if not summary.get("trained", True):
        return _("I kept your current model: {labels} labelled digits are not enough to train a new one yet. "
                 "Keep correcting my answers.", **details)
    return _("I kept your current model: the new one was not better on your {digits} digits ({after} vs "
             "{before} now, each digit read by a model trained without it). Your corrections still count: "
             "I use them right away, and the next fine-tune learns from them.", **details)


def promotion_notifier(application: Application[Any, Any, Any, Any, Any, Any],
                       loop: asyncio.AbstractEventLoop) -> Callable[[int, dict[str, Any]], None]:
    """A ``notify(telegram_id, summary)`` callable for the fine-tune worker (safe from any thread):
    every outcome, promoted or kept (``summary["promoted"]``)."""

    def notify(telegram_id: int, summary: dict[str, Any]) -> None:
        job_queue = application.job_queue
        if job_queue is None:
            log.warning("no JobQueue: fine-tune outcome for user %s not told", telegram_id)
            return
        loop.call_soon_threadsafe(lambda: job_queue.run_once(
            send_promotion, when=0, data=(telegram_id, dict(summary)), name=f"promotion:{telegram_id}"))

    return notify
