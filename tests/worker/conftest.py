"""Worker test helpers: a migrated SQLite file per test, users with labels, a stand-in trainer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.model.network import Checkpoint, DigitNet
from core.personal.finetune import FinetuneMetrics, FinetuneResult, GateDecision, head_state
from digitbot.settings import Settings
from digitbot.wiring import worker_config
from storage import repository as repo
from storage.db import init_db
from storage.models import FinetuneJob
from storage.records import DigitRecord
from tests.storage.conftest import BACKENDS, new_postgres_schema_url
from worker.config import WorkerConfig

ROW = 8  # digits per recorded "photo"


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQLite file, and a fresh PostgreSQL schema when DIGITBOT_TEST_POSTGRES_URL is set."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'digitbot.db'}"
        return
    url, drop = new_postgres_schema_url()
    try:
        yield url
    finally:
        drop()


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> WorkerConfig:
    return worker_config(Settings(
        data_dir=tmp_path, database_url=database_url, celery_broker_url=None, finetune_batch_size=1,
        finetune_min_labels=10, finetune_interval_s=3600, finetune_lease_s=30, finetune_max_attempts=3,
        weights_dir=None,
    ))


@pytest.fixture
def factory(config: WorkerConfig) -> Iterator[sessionmaker[Session]]:
    session_factory = init_db(config.database_url, upgrade=True)
    yield session_factory
    session_factory.kw["bind"].dispose()


def add_labelled(factory: sessionmaker[Session], telegram_id: int, images: np.ndarray, labels: np.ndarray,
                 *, answered: np.ndarray | None = None) -> None:
    """Store `images` as photos of up to ROW digits and label every digit with `labels`."""
    answered = labels if answered is None else answered
    for start in range(0, len(images), ROW):
        chunk = slice(start, min(start + ROW, len(images)))
        digits = [DigitRecord(image=img, digit=int(a), confidence=0.9, source="base", base_digit=int(a),
                              base_confidence=0.9) for img, a in zip(images[chunk], answered[chunk], strict=True)]
        with factory.begin() as session:
            record = repo.record_reading(session, telegram_id=telegram_id, chat_id=telegram_id,
                                         file_id=f"f{start}", file_unique_id=f"u{start}", digits=digits)
            repo.label_reading(session, telegram_id=telegram_id, reading_id=record.reading_id,
                               digits="".join(str(int(d)) for d in labels[chunk]))


def styled_writer(seed: int = 0, n: int = 200) -> Any:
    """A simulated user whose handwriting the base model reads badly (about half right): back-slanted,
    wide, flagged 1s, photographed. core.sim.crop_writers.SimUser with .images and .labels."""
    from core.sim.crop_writers import DEV_STYLES, styled_user

    return styled_user("dev-back-flag1", DEV_STYLES["dev-back-flag1"], n=n, seed=seed)


def random_digits(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 28, 28), dtype=np.uint8), rng.integers(0, 10, count)


def fake_trainer(*, promote: bool = True, reason: str = "held-out accuracy 0.50 -> 0.90",
                 calls: list[int] | None = None, before: Callable[[], None] | None = None
                 ) -> Callable[..., FinetuneResult]:
    """A stand-in for core.personal.finetune.finetune_user: a real (random) head checkpoint, a fixed gate."""
    def train(base: Any, images: np.ndarray, labels: np.ndarray, **_: Any) -> FinetuneResult:
        if before is not None:
            before()
        if calls is not None:
            calls.append(len(labels))
        checkpoint = Checkpoint(state_dict=head_state(DigitNet().state_dict()),
                                meta={"kind": "personal", "temperature": 1.0, "threshold": 0.9})
        metrics = FinetuneMetrics(heldout_before=0.5, heldout_after=0.9 if promote else 0.4, mnist_accuracy=0.99,
                                  n_labels=len(labels), n_holdout=len(labels), folds=5)
        checkpoint.metrics = metrics.to_dict()
        return FinetuneResult(checkpoint=checkpoint, decision=GateDecision(promote, reason), metrics=metrics)
    return train


def job_rows(factory: sessionmaker[Session], telegram_id: int) -> list[Any]:
    with factory() as session:
        user = repo.get_user(session, telegram_id=telegram_id)
        assert user is not None
        return list(session.scalars(select(FinetuneJob).where(FinetuneJob.user_id == user.id)
                                    .order_by(FinetuneJob.id)))


def active_version(factory: sessionmaker[Session], telegram_id: int) -> int | None:
    with factory() as session:
        user = repo.get_user(session, telegram_id=telegram_id)
        assert user is not None
        active = repo.active_model_version(session, user_id=user.id)
        return None if active is None else active.version
