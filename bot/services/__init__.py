"""What the handlers call: recognition and storage, off the event loop, as plain values.

One object, its parts by concern (each a module here): the update inbox, reading photos, labelling,
users, stats and fine-tunes. Recognition (OpenCV + torch in core/) runs in a small thread pool
(``inference_threads``) so one slow photo never stalls other users; database calls run in threads
too (``asyncio.to_thread``), one transaction per user action. All SQL stays in storage/, all torch
in core/. Everything it works with is given at construction.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from bot.inbox import RETENTION
from bot.personal_cache import PersonalModelCache
from bot.services.inbox import InboxServices
from bot.services.labelling import LabellingServices, Shown
from bot.services.notices import Notices
from bot.services.outcomes import BadLabel, DeadButton, NotFound, NotOwner, PhotoOutcome, Tapped, TrainOutcome
from bot.services.reading import ReadingServices
from bot.services.stats import FinetuneRequester, StatsServices, confusion_matrix, promotions, stats_card
from bot.services.users import UserServices
from core.recognize import PersonalModel, Recognizer
from storage.db import SessionFactory

__all__ = [
    "BadLabel", "BotServices", "DeadButton", "NotFound", "NotOwner", "Notices", "PhotoOutcome", "Shown", "Tapped",
    "TrainOutcome", "confusion_matrix", "promotions", "stats_card",
]
_PERSONAL_CACHE_SIZE = 64


class BotServices(InboxServices, UserServices, ReadingServices, LabellingServices, StatsServices):
    def __init__(self, *, sessions: SessionFactory, recognizer: Recognizer, inference_threads: int = 2,
                 finetune_interval_s: float = 60.0, request_finetune: FinetuneRequester | None = None,
                 notices: Notices | None = None, update_retention: timedelta = RETENTION) -> None:
        self.sessions = sessions
        self.update_retention = max(update_retention, timedelta(days=1))
        self.recognizer = recognizer
        self.finetune_interval_s = finetune_interval_s
        self.request_finetune_fn = request_finetune
        self.notices = notices or Notices()
        self.inference = ThreadPoolExecutor(max(1, inference_threads), thread_name_prefix="recognize")
        self.personal_models: PersonalModelCache[PersonalModel] = PersonalModelCache(_PERSONAL_CACHE_SIZE)
        self.replayed: set[int] = set()

    def close(self) -> None:
        self.inference.shutdown(wait=True)
