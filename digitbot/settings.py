"""The one place that reads the environment: Settings (prefix DIGITBOT_, and an optional .env file)
and the data locations (DIGITS_*). Only entry points import this module (digitbot.cli, bot.app's run
wiring, the Celery worker, the Alembic env); below them everything takes plain values."""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from core.model.data import DataPaths

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the checkout (tests, recipes); not used at run time
# The shipped base model, package data of `core` (importing `core` itself is cheap: no torch).
SHIPPED_BASE_WEIGHTS = Path(str(resources.files("core") / "weights" / "base.pt"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIGITBOT_", env_file=".env", extra="ignore")

    # Telegram / Bot API. No token: `digitbot run` starts the local Bot API emulator instead.
    telegram_token: SecretStr | None = None
    telegram_base_url: str = "https://api.telegram.org/bot"
    telegram_base_file_url: str = "https://api.telegram.org/file/bot"
    webhook_url: str | None = None  # set to run in webhook mode (scale-out)
    webhook_listen: str = "127.0.0.1"
    webhook_port: int = 8443
    emulator_host: str = "127.0.0.1"
    emulator_port: int = 8080
    emulator_allow_remote: bool = False  # let emulator_host be beyond loopback (0.0.0.0, a LAN address)
    # /healthz, /readyz and /metrics (bot/health.py), in polling and webhook mode; port 0: off.
    health_listen: str = "127.0.0.1"
    health_port: int = 8090
    log_format: Literal["text", "json"] = "text"  # json: one JSON object a line (python-json-logger)
    admin_ids: Annotated[list[int], NoDecode] = Field(default_factory=list)  # "123,456" or "[123, 456]"

    # Storage. Default: an SQLite file under data_dir, migrated at start-up. data_dir is relative to the
    # working directory (DIGITBOT_DATA_DIR to move it), never next to the code: installed, that is site-packages.
    data_dir: Path = Path("var")
    database_url: str | None = None
    weights_dir: Path | None = None  # personal weights as files here instead of DB blobs
    max_samples_per_user: int = 20_000

    # Models and continual learning.
    base_weights: Path = SHIPPED_BASE_WEIGHTS
    finetune_interval_s: float = 60.0
    finetune_min_labels: int = 10
    celery_broker_url: str | None = None  # e.g. redis://127.0.0.1:6379/0 for scale-out workers
    finetune_lease_s: float = 120.0  # a running job whose heartbeat is older is re-queued
    finetune_max_attempts: int = 3  # then the job is marked failed with its last error
    # A job (or batch) running longer is abandoned: failed, and retried while attempts remain
    # (Celery: the soft time limit; the hard limit kills the worker process 60 s later). A CPU
    # fine-tune takes seconds to a few minutes, so this only catches hangs.
    finetune_time_limit_s: float = 1800.0
    # No optimiser step for this long: the heartbeat stops renewing the lease (the sweep re-queues
    # the job) and the embedded worker abandons it. Covers loading, evaluation and a first compile.
    finetune_stall_s: float = 600.0
    finetune_batch_size: int = 1  # due users one worker fine-tunes together (GPU workers: e.g. 256)
    inference_threads: int = 2

    @field_validator("admin_ids", mode="before")
    @classmethod
    def _split_admin_ids(cls, value: object) -> object:
        """DIGITBOT_ADMIN_IDS as written by hand: ``123``, ``123,456``, ``123, 456``, a JSON list
        ``[123, 456]``, or empty (no admins). pydantic-settings would read any list field as JSON only."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part for part in re.split(r"[\s,]+", text) if part]

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'digitbot.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    return Settings()


def data_paths() -> DataPaths:
    """Where training and test data live: ``DIGITS_MNIST_DIR`` and ``DIGITS_SEMEION_PATH``, default
    under ``DIGITS_DATA_DIR`` (default ``../shared/data`` beside the checkout); gzipped MNIST is
    unpacked under ``$XDG_CACHE_HOME/digitbot``. Give it to ``core.model.data.use_data_paths``."""
    from core.model.data import DEFAULT_DATA_DIR, DataPaths

    env = os.environ
    data_dir = Path(env.get("DIGITS_DATA_DIR", DEFAULT_DATA_DIR))
    cache_home = Path(env.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return DataPaths(mnist_dir=Path(env.get("DIGITS_MNIST_DIR", data_dir / "mnist")),
                     semeion_path=Path(env.get("DIGITS_SEMEION_PATH", data_dir / "semeion" / "semeion.data")),
                     cache_dir=cache_home / "digitbot")
