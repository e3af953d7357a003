"""The facade the handlers call: recognition and storage, off the event loop, as plain values.

Recognition (OpenCV + torch in core/) runs in a small thread pool sized by
``Settings.inference_threads`` so one slow photo never stalls other users; database calls run in
threads too (``asyncio.to_thread``). All SQL stays in storage/, all torch in core/.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from bot.i18n import resolve_language
from bot.inbox import RETENTION
from bot.personal_cache import PersonalModelCache
from bot.views import DigitCard, ReadingCard, StatsCard
from core.memory import PersonalMemory
from core.recognize import PersonalModel, PhotoReading, Recognizer
from storage import repository as repo
from storage.db import Session, SessionFactory
from storage.errors import CorruptWeights, InvalidLabel, NotYourSample, QuotaExceeded, UnknownSample
from storage.records import TRUE_TEXT_MAX, DigitRecord, FinetuneStatus, ReadingView, UserStats
from storage.repository import inbox as inbox_repo
from storage.repository.readings import owned_reading

log = logging.getLogger(__name__)
_PERSONAL_CACHE_SIZE = 64


class NotFound(LookupError):
    """The reading is gone (e.g. after /forget) or never existed."""


class NotOwner(PermissionError):
    """The reading belongs to someone else: only the person who sent the photo may label it."""


class BadLabel(ValueError):
    """A text label storage refuses: not digits 0-9, or more than ``longest`` of them."""

    def __init__(self, longest: int) -> None:
        super().__init__(f"expected 1 to {longest} digits")
        self.longest = longest


@dataclass(frozen=True)
class PhotoOutcome:
    # "ok" | "duplicate" | "quota" | any core.preprocess status ("no_digit", "not_an_image", ...)
    status: str
    card: ReadingCard | None = None
    quota: int | None = None


@dataclass(frozen=True)
class TrainOutcome:
    # "queued" | "already_queued" | "not_enough_labels" | "no_new_labels" | "unknown_user" | "scheduled"
    reason: str
    labels: int = 0
    needed: int = 0
    interval_s: float = 0.0
    job_id: int | None = None  # the queued (or already open) fine-tune job


class FinetuneRequester(Protocol):
    def __call__(self, telegram_id: int) -> Any: ...  # worker.scheduler.FinetuneRequest-like


class BotServices:
    def __init__(self, *, sessions: SessionFactory, recognizer: Recognizer, inference_threads: int = 2,
                 finetune_min_labels: int = 10, finetune_interval_s: float = 60.0,
                 request_finetune: FinetuneRequester | None = None,
                 update_retention: timedelta = RETENTION) -> None:
        self.sessions = sessions
        # how long a processed-update marker means "already handled" (bot/inbox.py's retention; at
        # least the 24 h that Telegram keeps an update: update ids are reused after a week without any)
        self.update_retention = max(update_retention, timedelta(days=1))
        self.recognizer = recognizer
        self.finetune_min_labels = finetune_min_labels
        self.finetune_interval_s = finetune_interval_s
        self.request_finetune_fn = request_finetune
        self._inference = ThreadPoolExecutor(max(1, inference_threads), thread_name_prefix="recognize")
        self.personal_models: PersonalModelCache[PersonalModel] = PersonalModelCache(_PERSONAL_CACHE_SIZE)
        self._notify: Callable[[int, dict[str, Any]], None] | None = None
        self._replayed: set[int] = set()  # update ids replayed from the inbox at start-up, until done

    def close(self) -> None:
        self._inference.shutdown(wait=True)

    def forget_update_markers(self) -> int:
        """Drop every processed-update marker: for a fresh local emulator, whose update ids start over
        and which cannot redeliver anything from before it started."""
        with self.sessions.begin() as session:
            inbox_repo.inbox_clear(session)
            return repo.prune_processed_updates(session, older_than=datetime.now(UTC) + timedelta(days=1))

    # --- the durable update inbox (bot/inbox.py); sync, called in threads -------------------------
    def inbox_receive(self, update_id: int, payload: dict[str, Any], owner: str, max_attempts: int,
                      retention: timedelta = RETENTION) -> str:
        with self.sessions.begin() as session:
            return inbox_repo.inbox_receive(session, update_id=update_id, payload=payload, owner=owner,
                                            max_attempts=max_attempts, stale_before=_stale_before(retention))

    def inbox_take_pending(self, owner: str | None, max_attempts: int) -> inbox_repo.Replay:
        with self.sessions.begin() as session:
            return inbox_repo.inbox_take_pending(session, owner=owner, max_attempts=max_attempts)

    def inbox_done(self, update_id: int) -> int:
        self._replayed.discard(update_id)
        with self.sessions.begin() as session:
            return inbox_repo.inbox_done(session, update_ids=[update_id])

    def inbox_failed(self, update_id: int, max_attempts: int) -> bool:
        self._replayed.discard(update_id)
        with self.sessions.begin() as session:
            return inbox_repo.inbox_failed(session, update_id=update_id, max_attempts=max_attempts)

    def inbox_purge(self, retention: timedelta) -> int:
        """Delete finished inbox rows and processed-update markers older than ``retention`` (the
        markers of updates still pending stay); returns how many inbox rows."""
        with self.sessions.begin() as session:
            removed = inbox_repo.inbox_purge(session, finished_before=datetime.now(UTC) - retention)
            repo.prune_processed_updates(session, older_than=_stale_before(retention))
            return removed

    def note_replayed(self, update_id: int) -> None:
        """This update is handled again after a crash: a photo already stored but never answered is
        answered from the stored reading (see :meth:`read_photo`)."""
        self._replayed.add(update_id)

    # --- users and languages -------------------------------------------------------------------
    async def language(self, telegram_id: int, telegram_language: str | None) -> str:
        """The user's catalogue: their /lang choice (the only language stored), else their Telegram
        language, so a user who changes Telegram's language is followed until they pick one."""
        stored = await asyncio.to_thread(self._stored_language, telegram_id)
        return resolve_language(stored or telegram_language)

    def _stored_language(self, telegram_id: int) -> str | None:
        with self.sessions() as session:
            user = repo.get_user(session, telegram_id=telegram_id)
            return user.language if user is not None else None

    async def set_language(self, telegram_id: int, language: str) -> None:
        def work() -> None:
            with self.sessions.begin() as session:
                repo.set_user_language(session, telegram_id=telegram_id, language=language)
        await asyncio.to_thread(work)

    async def start_private(self, telegram_id: int) -> None:
        """/start in a private chat: the user consents to have their photos in groups read."""
        def work() -> None:
            with self.sessions.begin() as session:
                repo.mark_started_private(session, telegram_id=telegram_id)
        await asyncio.to_thread(work)

    async def reads_in_groups(self, telegram_id: int) -> bool:
        """Whether this user's photos posted in groups may be read (they started the bot in private)."""
        def work() -> bool:
            with self.sessions() as session:
                return repo.started_private(session, telegram_id=telegram_id)
        return await asyncio.to_thread(work)

    # --- photos --------------------------------------------------------------------------------
    async def read_photo(self, *, update_id: int, telegram_id: int, chat_id: int,
                         file_id: str, file_unique_id: str, data: bytes) -> PhotoOutcome:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._inference, lambda: self._read_photo(
            update_id, telegram_id, chat_id, file_id, file_unique_id, data))

    def _read_photo(self, update_id: int, telegram_id: int, chat_id: int,
                    file_id: str, file_unique_id: str, data: bytes) -> PhotoOutcome:
        version_id, personal = self._personal_model(telegram_id)
        reading: PhotoReading = self.recognizer.read(data, personal)
        if reading.status != "ok":
            return PhotoOutcome(status=reading.status)
        records = [
            DigitRecord(image=crop.image, digit=p.digit, confidence=p.confidence, source=p.source,
                        base_digit=p.base_digit, base_confidence=p.base_confidence,
                        model_version_id=version_id if p.source == "personal" else None)
            for p, crop in zip(reading.predictions, reading.crops, strict=True)
        ]
        try:
            with self.sessions.begin() as session:
                if not repo.mark_update_processed(session, update_id=update_id,
                                                  stale_before=_stale_before(self.update_retention)):
                    return self._unanswered(session, update_id, telegram_id) or PhotoOutcome(status="duplicate")
                stored = repo.record_reading(session, telegram_id=telegram_id, chat_id=chat_id, file_id=file_id,
                                             file_unique_id=file_unique_id, digits=records)
                inbox_repo.inbox_link_reading(session, update_id=update_id, reading_id=stored.reading_id)
        except QuotaExceeded as exc:
            return PhotoOutcome(status="quota", quota=exc.limit)
        personal_used = any(p.source == "personal" for p in reading.predictions)
        card = ReadingCard(
            reading_id=stored.reading_id, owner_telegram_id=telegram_id, chat_id=chat_id, bot_message_id=None,
            digits=tuple(DigitCard(p.digit, p.confidence, p.source, runner_up=p.runner_up())
                         for p in reading.predictions),
            personal_version=personal.version if personal is not None and personal_used else None,
        )
        return PhotoOutcome(status="ok", card=card)

    def _unanswered(self, session: Session, update_id: int, telegram_id: int) -> PhotoOutcome | None:
        """A replayed photo whose reading was stored before the crash but never answered: that
        reading, to be answered now (only for replays: a redelivery racing the first handling of the
        same update must stay silent, that one will answer)."""
        if update_id not in self._replayed:
            return None
        reading_id = inbox_repo.inbox_reading(session, update_id=update_id)
        view = None if reading_id is None else repo.get_reading(session, telegram_id=telegram_id,
                                                                 reading_id=reading_id)
        if view is None or view.bot_message_id is not None:
            return None
        log.info("update %s: answering reading %s, stored before the bot stopped", update_id, reading_id)
        return PhotoOutcome(status="ok", card=self._card(session, view, telegram_id))

    def _personal_model(self, telegram_id: int) -> tuple[int | None, PersonalModel | None]:
        """(model version id, model) of what the user has taught the bot: their active personal head
        (if any) and the memory of their labelled digits (so a correction changes the very next
        reading of a look-alike). Cached by the exact weights and the labels' revision."""
        generation = self.personal_models.generation()
        with self.sessions() as session:
            user = repo.get_user(session, telegram_id=telegram_id)
            if user is None:
                self.personal_models.discard_user(telegram_id)
                return None, None
            active = repo.active_model_version(session, user_id=user.id)
            revision = repo.label_revision(session, user_id=user.id)
            if active is None and revision[0] == 0:
                self.personal_models.discard_user(telegram_id)
                return None, None
            weights = None if active is None else (active.id, active.version, active.weights_sha256)
            key = (weights, revision)
            cached = self.personal_models.get(telegram_id, key)
            if cached is not None:
                return (active.id if active is not None else None), cached
            labelled = repo.training_set(session, user_id=user.id)
            memory = None
            if len(labelled):
                memory = PersonalMemory(labelled.images, labelled.labels, ids=labelled.sample_ids)
                previous = self.personal_models.latest(telegram_id)
                if previous is not None and previous.memory is not None:
                    memory.adopt(previous.memory)
            model = PersonalModel(None, memory=memory)
            if active is not None:
                try:
                    blob = repo.load_weights(session, user_id=user.id, version_id=active.id)
                    model = PersonalModel.from_bytes(blob, version=active.version, memory=memory)
                except (CorruptWeights, ValueError, RuntimeError) as error:  # the base model answers
                    log.error("personal model %s unusable, the base model answers: %s", active.id, error)
                    active = None
        self.personal_models.put(telegram_id, key, model, generation=generation)
        return (active.id if active is not None else None), model

    async def attach_message(self, reading_id: int, chat_id: int, message_id: int) -> None:
        def work() -> None:
            with self.sessions.begin() as session:
                repo.attach_bot_message(session, reading_id=reading_id, chat_id=chat_id, message_id=message_id)
        await asyncio.to_thread(work)

    # --- labels --------------------------------------------------------------------------------
    async def card(self, telegram_id: int, reading_id: int) -> ReadingCard:
        """The reading as it stands; NotFound / NotOwner."""
        return await asyncio.to_thread(self._run_labelling, telegram_id, reading_id, None, None)

    async def card_for_reply(self, telegram_id: int, chat_id: int, message_id: int) -> ReadingCard | None:
        def work() -> ReadingCard | None:
            with self.sessions() as session:
                view = repo.reading_for_message(session, telegram_id=telegram_id, chat_id=chat_id,
                                                message_id=message_id)
                return None if view is None else self._card(session, view, telegram_id)
        return await asyncio.to_thread(work)

    async def label_digit(self, telegram_id: int, reading_id: int, position: int, digit: int,
                          update_id: int) -> ReadingCard:
        def change(session: Session) -> None:
            repo.label_sample(session, telegram_id=telegram_id, reading_id=reading_id, position=position,
                              digit=digit)
            repo.set_true_text(session, telegram_id=telegram_id, reading_id=reading_id, text=None)
        return await asyncio.to_thread(self._run_labelling, telegram_id, reading_id, change, update_id)

    async def label_all(self, telegram_id: int, reading_id: int, digits: str | None,
                        update_id: int | None) -> ReadingCard:
        """Label every digit: ``digits`` from a text reply, or None to confirm the answers given.

        A reply with a different number of digits than were read (the photo was cut into digits
        wrongly) is kept whole as the reading's true text; the per-digit labels stay as they are.
        Any other labelling supersedes a true text kept before (the latest answer wins)."""
        def change(session: Session) -> None:
            view = repo.get_reading(session, telegram_id=telegram_id, reading_id=reading_id)
            if view is None:
                return  # not found or not theirs: _run_labelling says which
            text = view.labelled_text if digits is None else "".join(digits.split())  # keeps corrections made
            if len(text) != len(view.digits):
                repo.set_true_text(session, telegram_id=telegram_id, reading_id=reading_id, text=text)
                return
            repo.label_reading(session, telegram_id=telegram_id, reading_id=reading_id, digits=text)
            repo.set_true_text(session, telegram_id=telegram_id, reading_id=reading_id, text=None)
        return await asyncio.to_thread(self._run_labelling, telegram_id, reading_id, change, update_id)

    async def undo(self, telegram_id: int, reading_id: int, update_id: int) -> ReadingCard:
        """Take back every label of this reading and its true text (storage keeps the labels' history)."""
        def change(session: Session) -> None:
            view = repo.get_reading(session, telegram_id=telegram_id, reading_id=reading_id)
            for digit in view.digits if view is not None else []:
                while repo.undo_label(session, telegram_id=telegram_id, reading_id=reading_id,
                                      position=digit.position) is not None:
                    pass
            if view is not None:
                repo.set_true_text(session, telegram_id=telegram_id, reading_id=reading_id, text=None)
        return await asyncio.to_thread(self._run_labelling, telegram_id, reading_id, change, update_id)

    def _run_labelling(self, telegram_id: int, reading_id: int, change: Callable[[Session], None] | None,
                       update_id: int | None) -> ReadingCard:
        try:
            with self.sessions.begin() as session:
                fresh = update_id is None or repo.mark_update_processed(
                    session, update_id=update_id, stale_before=_stale_before(self.update_retention))
                if change is not None and fresh:
                    change(session)
                owned_reading(session, telegram_id=telegram_id, reading_id=reading_id)  # raises if not ours
                view = repo.get_reading(session, telegram_id=telegram_id, reading_id=reading_id)
                if view is None:
                    raise UnknownSample(str(reading_id))
                return self._card(session, view, telegram_id)
        except UnknownSample:
            raise NotFound(reading_id) from None
        except NotYourSample:
            raise NotOwner(reading_id) from None
        except InvalidLabel:
            raise BadLabel(TRUE_TEXT_MAX) from None

    @staticmethod
    def _card(session: Session, view: ReadingView, telegram_id: int) -> ReadingCard:
        version_ids = {d.model_version_id for d in view.digits if d.model_version_id is not None}
        versions = {v.id: v.version for v in repo.model_versions(session, user_id=view.user_id)
                    if v.id in version_ids} if version_ids else {}
        return ReadingCard(
            reading_id=view.reading_id, owner_telegram_id=telegram_id, chat_id=view.chat_id,
            bot_message_id=view.bot_message_id,
            digits=tuple(DigitCard(d.digit, d.confidence, d.source, label=d.label) for d in view.digits),
            personal_version=max(versions.values()) if versions else None, true_text=view.true_text,
        )

    # --- stats, forget, fine-tune ----------------------------------------------------------------
    async def stats(self, telegram_id: int) -> tuple[StatsCard, UserStats]:
        def work() -> UserStats:
            with self.sessions() as session:
                return repo.user_stats(session, telegram_id=telegram_id)
        stats = await asyncio.to_thread(work)
        return stats_card(stats), stats

    async def forget(self, telegram_id: int) -> int:
        def work() -> int:
            with self.sessions.begin() as session:
                return repo.forget_user(session, telegram_id=telegram_id)
        try:
            return await asyncio.to_thread(work)
        finally:  # their personal model leaves memory too (and is not reloaded by a photo in flight)
            self.personal_models.drop_user(telegram_id)

    async def request_finetune(self, telegram_id: int) -> TrainOutcome:
        if self.request_finetune_fn is None:
            return TrainOutcome("scheduled", interval_s=self.finetune_interval_s)
        result = await asyncio.to_thread(self.request_finetune_fn, telegram_id)
        job_id = getattr(result, "job_id", None)
        return TrainOutcome(str(result.reason), labels=int(getattr(result, "labels", 0)),
                            needed=int(getattr(result, "needed", self.finetune_min_labels)),
                            interval_s=self.finetune_interval_s,
                            job_id=int(job_id) if isinstance(job_id, int) else None)

    async def finetune_status(self, telegram_id: int, job_id: int | None = None) -> FinetuneStatus | None:
        """That fine-tune job of the user (None: the latest one), or None when there is none."""
        def work() -> FinetuneStatus | None:
            with self.sessions() as session:
                return repo.finetune_status(session, telegram_id=telegram_id, job_id=job_id)

        return await asyncio.to_thread(work)

    # --- fine-tune outcome notifications (called by the fine-tune worker, from any thread) ----
    def set_notifier(self, notify: Callable[[int, dict[str, Any]], None]) -> None:
        self._notify = notify

    def notify_model_promoted(self, telegram_id: int, summary: dict[str, Any]) -> None:
        """Tell the user how a fine-tune ended: a promotion, or (``summary["promoted"]`` False) that
        their current model was kept (worker.notices.summary_of; every outcome is told once)."""
        if self._notify is None:
            log.warning("fine-tune outcome for user %s not told: the bot is not running", telegram_id)
            return
        self._notify(telegram_id, summary)


def _stale_before(retention: timedelta) -> datetime:
    """Update-id records older than this belong to an earlier update with the same id: Telegram keeps
    an update at most 24 hours (so never less than a day, whatever the retention)."""
    return datetime.now(UTC) - max(retention, timedelta(days=1))


def stats_card(stats: UserStats) -> StatsCard:
    active = next((m for m in reversed(stats.models) if m.status == "active"), None)
    return StatsCard(
        labelled=stats.labelled, samples=stats.samples, accuracy=stats.accuracy,
        base_accuracy=stats.base_accuracy, last50_count=stats.last50_count,
        last50_accuracy=stats.last50_accuracy, last50_base_accuracy=stats.last50_base_accuracy,
        per_digit=[(d.digit, d.count, d.accuracy) for d in stats.per_digit],
        personal_version=active.version if active is not None else None,
        personal_since=active.promoted_at if active is not None else None,
        top_confusions=list(stats.confusions[:3]),
        personal_answers=stats.personal_answers,
        personal_accuracy=stats.personal_correct / stats.personal_answers if stats.personal_answers else None,
        personal_base_accuracy=(stats.personal_base_correct / stats.personal_answers
                                if stats.personal_answers else None),
    )


def confusion_matrix(stats: UserStats) -> list[list[int]]:
    matrix = [[0] * 10 for _ in range(10)]
    for digit in stats.per_digit:
        matrix[digit.digit][digit.digit] = digit.correct
    for true, answered, count in stats.confusions:
        matrix[true][answered] = count
    return matrix


def promotions(stats: UserStats) -> Sequence[tuple[Any, int]]:
    return [(m.promoted_at, m.version) for m in stats.models if m.promoted_at is not None]
