"""What the fine-tune worker needs, as plain values: the entry points build it from the settings
(digitbot.wiring.worker_config); nothing in worker/ reads the environment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WorkerConfig:
    """The meaning of each field: digitbot.settings.Settings, which holds the defaults."""

    database_url: str  # for processes that open their own database (the Celery worker)
    weights_dir: Path | None
    max_samples_per_user: int
    base_weights: Path
    celery_broker_url: str | None
    finetune_interval_s: float
    finetune_min_labels: int
    finetune_lease_s: float
    finetune_max_attempts: int
    finetune_time_limit_s: float
    finetune_stall_s: float
    finetune_batch_size: int
