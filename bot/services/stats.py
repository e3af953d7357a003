"""/stats, /train and /admin status: how the bot does for a user, their fine-tunes, the service's counts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from bot.services.base import ServicesBase
from bot.services.outcomes import TrainOutcome
from bot.views import StatsCard
from storage import repository as repo
from storage.records import FinetuneRequest, FinetuneStatus, UserStats
from storage.repository.service import service_counts

FinetuneRequester = Callable[[int], FinetuneRequest]  # worker.runner.WorkerHandle.request_finetune


class StatsServices(ServicesBase):
    finetune_interval_s: float
    request_finetune_fn: FinetuneRequester | None  # None: no embedded worker, the sweep decides

    async def stats(self, telegram_id: int) -> tuple[StatsCard, UserStats]:
        def work() -> UserStats:
            with self.sessions() as session:
                return repo.user_stats(session, telegram_id=telegram_id)
        stats = await asyncio.to_thread(work)
        return stats_card(stats), stats

    async def request_finetune(self, telegram_id: int) -> TrainOutcome:
        if self.request_finetune_fn is None:
            return TrainOutcome("scheduled", interval_s=self.finetune_interval_s)
        result = await asyncio.to_thread(self.request_finetune_fn, telegram_id)
        return TrainOutcome(result.reason, labels=result.labels, needed=result.needed,
                            interval_s=self.finetune_interval_s, job_id=result.job_id)

    async def finetune_status(self, telegram_id: int, job_id: int | None = None) -> FinetuneStatus | None:
        """That fine-tune job of the user (None: the latest one), or None when there is none."""
        def work() -> FinetuneStatus | None:
            with self.sessions() as session:
                return repo.finetune_status(session, telegram_id=telegram_id, job_id=job_id)
        return await asyncio.to_thread(work)

    async def service_status(self) -> dict[str, int]:
        """Whole-service counts for operators (/admin status): numbers only, nobody's data."""
        def work() -> dict[str, int]:
            with self.sessions() as session:
                return service_counts(session)
        return await asyncio.to_thread(work)


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
