"""Users: their language, their consent to be read in groups, and /forget."""

from __future__ import annotations

import asyncio

from bot.i18n import resolve_language
from bot.personal_cache import PersonalModelCache
from bot.services.base import ServicesBase
from core.recognize import PersonalModel
from storage import repository as repo
from storage.db import Session


def language_in(session: Session, telegram_id: int, telegram_language: str | None) -> str:
    """The user's catalogue: their /lang choice (the only language stored), else their Telegram
    language, so a user who changes Telegram's language is followed until they pick one."""
    user = repo.get_user(session, telegram_id=telegram_id)
    return resolve_language((user.language if user is not None else None) or telegram_language)


class UserServices(ServicesBase):
    personal_models: PersonalModelCache[PersonalModel]

    async def language(self, telegram_id: int, telegram_language: str | None) -> str:
        def work() -> str:
            with self.sessions() as session:
                return language_in(session, telegram_id, telegram_language)
        return await asyncio.to_thread(work)

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

    async def forget(self, telegram_id: int) -> int:
        def work() -> int:
            with self.sessions.begin() as session:
                return repo.forget_user(session, telegram_id=telegram_id)
        try:
            return await asyncio.to_thread(work)
        finally:  # their personal model leaves memory too (and is not reloaded by a photo in flight)
            self.personal_models.drop_user(telegram_id)
