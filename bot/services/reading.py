"""Reading photos: recognition in the inference thread pool with what the user taught the bot, then
the reading stored and answered (a replayed photo stored before a crash is answered from storage)."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from bot.personal_cache import PersonalModelCache
from bot.services.base import ServicesBase, stale_before
from bot.services.labelling import reading_card
from bot.services.outcomes import PhotoOutcome
from bot.views import DigitCard, ReadingCard
from core.personal.memory import PersonalMemory
from core.recognize import PersonalModel, PhotoReading, Recognizer
from core.sources import PERSONAL
from storage import repository as repo
from storage.db import Session
from storage.errors import CorruptWeights, QuotaExceeded
from storage.records import DigitRecord
from storage.repository import inbox as inbox_repo

log = logging.getLogger(__name__)


class ReadingServices(ServicesBase):
    recognizer: Recognizer
    personal_models: PersonalModelCache[PersonalModel]
    replayed: set[int]
    inference: ThreadPoolExecutor

    async def read_photo(self, *, update_id: int, telegram_id: int, chat_id: int,
                         file_id: str, file_unique_id: str, data: bytes) -> PhotoOutcome:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.inference, lambda: self._read_photo(
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
                        model_version_id=version_id if p.source == PERSONAL else None)
            for p, crop in zip(reading.predictions, reading.crops, strict=True)
        ]
        try:
            with self.sessions.begin() as session:
                if not repo.mark_update_processed(session, update_id=update_id,
                                                  stale_before=stale_before(self.update_retention)):
                    return self._unanswered(session, update_id, telegram_id) or PhotoOutcome(status="duplicate")
                stored = repo.record_reading(session, telegram_id=telegram_id, chat_id=chat_id, file_id=file_id,
                                             file_unique_id=file_unique_id, digits=records)
                inbox_repo.inbox_link_reading(session, update_id=update_id, reading_id=stored.reading_id)
        except QuotaExceeded as exc:
            return PhotoOutcome(status="quota", quota=exc.limit)
        personal_used = any(p.source == PERSONAL for p in reading.predictions)
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
        if update_id not in self.replayed:
            return None
        reading_id = inbox_repo.inbox_reading(session, update_id=update_id)
        view = None if reading_id is None else repo.get_reading(session, telegram_id=telegram_id,
                                                                 reading_id=reading_id)
        if view is None or view.bot_message_id is not None:
            return None
        log.info("update %s: answering reading %s, stored before the bot stopped", update_id, reading_id)
        return PhotoOutcome(status="ok", card=reading_card(session, view, telegram_id))

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
