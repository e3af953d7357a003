"""Labels: a reading's buttons, text replies with the right digits, and the card that shows them.

Each change runs in one transaction that also checks the reading is the user's and records the
update id (a replayed tap or reply changes nothing twice), then reads the card back as stored."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from bot.keyboards import ReadingAction
from bot.services.base import ServicesBase, stale_before
from bot.services.outcomes import BadLabel, DeadButton, NotFound, NotOwner, Tapped
from bot.services.users import language_in
from bot.views import DigitCard, ReadingCard
from storage import repository as repo
from storage.db import Session
from storage.errors import InvalidLabel, NotYourSample, UnknownSample
from storage.records import TRUE_TEXT_MAX, ReadingView
from storage.repository.readings import owned_reading

Change = Callable[[Session, ReadingView], None]  # the reading as it stands, the user's


@dataclass(frozen=True)
class Shown:
    """The message a tapped button is on: its chat and id, and who sent the message it replies to."""

    chat_id: int
    message_id: int
    replied_from: int | None


def reading_card(session: Session, view: ReadingView, telegram_id: int) -> ReadingCard:
    version_ids = {d.model_version_id for d in view.digits if d.model_version_id is not None}
    versions = {v.id: v.version for v in repo.model_versions(session, user_id=view.user_id)
                if v.id in version_ids} if version_ids else {}
    return ReadingCard(
        reading_id=view.reading_id, owner_telegram_id=telegram_id, chat_id=view.chat_id,
        bot_message_id=view.bot_message_id,
        digits=tuple(DigitCard(d.digit, d.confidence, d.source, label=d.label) for d in view.digits),
        personal_version=max(versions.values()) if versions else None, true_text=view.true_text,
    )


def shown_on(card: ReadingCard, shown: Shown | None) -> bool:
    """Buttons act only on the reading shown in the message they are attached to: the reading's
    answer, or another answer of ours to the owner's message in that chat. A photo is answered twice
    when the bot is killed between sending its answer and linking it to the reading (the update
    inbox answers it again at the restart and links the second one); the first answer's buttons
    must still record the user's label (issue 13: they said "This button doesn't work any more"
    and the label was lost, tests/reliability/test_bot_restart.py)."""
    if shown is None or card.bot_message_id is None:
        return True  # inline-mode message or reply not attached yet: the owner check suffices
    if shown.chat_id != card.chat_id:
        return False
    return shown.message_id == card.bot_message_id or shown.replied_from == card.owner_telegram_id


class LabellingServices(ServicesBase):
    async def tap(self, telegram_id: int, telegram_language: str | None, action: ReadingAction,
                  shown: Shown | None, update_id: int) -> Tapped:
        """A reading button, in one transaction: the user's language, the checks (their reading, the
        buttons' own message, a position it has), the label change, and the card as stored."""
        change = self._tap_change(telegram_id, action)
        language: list[str] = []

        def read_language(session: Session) -> None:
            language.append(language_in(session, telegram_id, telegram_language))

        def check(card: ReadingCard) -> None:
            if not shown_on(card, shown):
                raise DeadButton(action.reading_id)
            if action.kind in ("digit", "pick") and (action.position is None or action.position >= len(card.digits)):
                raise NotFound(action.reading_id)

        def work() -> Tapped:
            try:
                card = self._run_labelling(telegram_id, action.reading_id, change,
                                           update_id if change is not None else None, check=check,
                                           first=read_language)
            except (NotOwner, NotFound, DeadButton) as refusal:
                return Tapped(language[0], None, type(refusal))
            return Tapped(language[0], card)
        return await asyncio.to_thread(work)

    def _tap_change(self, telegram_id: int, action: ReadingAction) -> Change | None:
        reading_id = action.reading_id
        if action.kind == "digit" and action.position is not None and action.digit is not None:
            return _label_digit(telegram_id, reading_id, action.position, action.digit)
        if action.kind == "confirm":
            return _label_all(telegram_id, reading_id, None)
        if action.kind == "undo":
            return _undo(telegram_id, reading_id)
        return None  # "pick" / "back" only change the keyboard

    async def card_for_reply(self, telegram_id: int, chat_id: int, message_id: int) -> ReadingCard | None:
        def work() -> ReadingCard | None:
            with self.sessions() as session:
                view = repo.reading_for_message(session, telegram_id=telegram_id, chat_id=chat_id,
                                                message_id=message_id)
                return None if view is None else reading_card(session, view, telegram_id)
        return await asyncio.to_thread(work)

    async def label_digit(self, telegram_id: int, reading_id: int, position: int, digit: int,
                          update_id: int) -> ReadingCard:
        return await asyncio.to_thread(self._run_labelling, telegram_id, reading_id,
                                       _label_digit(telegram_id, reading_id, position, digit), update_id)

    async def label_all(self, telegram_id: int, reading_id: int, digits: str | None,
                        update_id: int | None) -> ReadingCard:
        """Label every digit: ``digits`` from a text reply, or None to confirm the answers given.

        A reply with a different number of digits than were read (the photo was cut into digits
        wrongly) is kept whole as the reading's true text; the per-digit labels stay as they are.
        Any other labelling supersedes a true text kept before (the latest answer wins)."""
        return await asyncio.to_thread(self._run_labelling, telegram_id, reading_id,
                                       _label_all(telegram_id, reading_id, digits), update_id)

    async def undo(self, telegram_id: int, reading_id: int, update_id: int) -> ReadingCard:
        """Take back every label of this reading and its true text (storage keeps the labels' history)."""
        return await asyncio.to_thread(self._run_labelling, telegram_id, reading_id,
                                       _undo(telegram_id, reading_id), update_id)

    def _run_labelling(self, telegram_id: int, reading_id: int, change: Change | None, update_id: int | None,
                       *, check: Callable[[ReadingCard], None] | None = None,
                       first: Callable[[Session], None] | None = None) -> ReadingCard:
        """One transaction: ``first``, the reading (the user's, or NotFound / NotOwner), ``check`` on
        it, the change unless this update id was handled before, and the card as stored."""
        try:
            with self.sessions.begin() as session:
                if first is not None:
                    first(session)
                view = _owned_view(session, telegram_id, reading_id)
                if check is not None:
                    check(reading_card(session, view, telegram_id))
                fresh = update_id is None or repo.mark_update_processed(
                    session, update_id=update_id, stale_before=stale_before(self.update_retention))
                if change is None or not fresh:
                    return reading_card(session, view, telegram_id)
                change(session, view)
                return reading_card(session, _owned_view(session, telegram_id, reading_id), telegram_id)
        except UnknownSample:
            raise NotFound(reading_id) from None
        except NotYourSample:
            raise NotOwner(reading_id) from None
        except InvalidLabel:
            raise BadLabel(TRUE_TEXT_MAX) from None


def _owned_view(session: Session, telegram_id: int, reading_id: int) -> ReadingView:
    """The reading with its digits and labels, checking (once) that it is the user's."""
    view = repo.get_reading(session, telegram_id=telegram_id, reading_id=reading_id)
    if view is None:  # gone, or someone else's: say which
        owned_reading(session, telegram_id=telegram_id, reading_id=reading_id)
        raise UnknownSample(str(reading_id))
    return view


def _label_digit(telegram_id: int, reading_id: int, position: int, digit: int) -> Change:
    def change(session: Session, _view: ReadingView) -> None:
        repo.label_sample(session, telegram_id=telegram_id, reading_id=reading_id, position=position, digit=digit)
        repo.set_true_text(session, telegram_id=telegram_id, reading_id=reading_id, text=None)
    return change


def _label_all(telegram_id: int, reading_id: int, digits: str | None) -> Change:
    def change(session: Session, view: ReadingView) -> None:
        text = view.labelled_text if digits is None else "".join(digits.split())  # keeps corrections made
        if len(text) != len(view.digits):
            repo.set_true_text(session, telegram_id=telegram_id, reading_id=reading_id, text=text)
            return
        repo.label_reading(session, telegram_id=telegram_id, reading_id=reading_id, digits=text)
        repo.set_true_text(session, telegram_id=telegram_id, reading_id=reading_id, text=None)
    return change


def _undo(telegram_id: int, reading_id: int) -> Change:
    def change(session: Session, view: ReadingView) -> None:
        for digit in view.digits:
            while repo.undo_label(session, telegram_id=telegram_id, reading_id=reading_id,
                                  position=digit.position) is not None:
                pass
        repo.set_true_text(session, telegram_id=telegram_id, reading_id=reading_id, text=None)
    return change
