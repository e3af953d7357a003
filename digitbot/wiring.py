"""From the one Settings to the plain values each layer takes (used by the entry points only)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from digitbot.settings import Settings, data_paths

if TYPE_CHECKING:
    from storage.db import SessionFactory
    from worker.config import WorkerConfig


def open_database(settings: Settings, *, upgrade: bool | None = None) -> SessionFactory:
    """The application's session factory (SQLite is migrated at start-up; see storage.db.init_db)."""
    from storage.db import init_db

    return init_db(settings.resolved_database_url, weights_dir=settings.weights_dir,
                   max_samples_per_user=settings.max_samples_per_user, upgrade=upgrade)


def worker_config(settings: Settings) -> WorkerConfig:
    from worker.config import WorkerConfig

    return WorkerConfig(
        database_url=settings.resolved_database_url, weights_dir=settings.weights_dir,
        max_samples_per_user=settings.max_samples_per_user, base_weights=settings.base_weights,
        celery_broker_url=settings.celery_broker_url, finetune_interval_s=settings.finetune_interval_s,
        finetune_min_labels=settings.finetune_min_labels, finetune_lease_s=settings.finetune_lease_s,
        finetune_max_attempts=settings.finetune_max_attempts, finetune_time_limit_s=settings.finetune_time_limit_s,
        finetune_stall_s=settings.finetune_stall_s, finetune_batch_size=settings.finetune_batch_size)


def use_data_paths() -> None:
    """Point core.model.data at DIGITS_* (for commands that train, fine-tune or read with a memory)."""
    from core.model.data import use_data_paths as use

    use(data_paths())
