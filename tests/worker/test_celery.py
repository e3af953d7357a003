"""Scale-out for real: a Redis server and a `digitbot worker --celery` subprocess run a job.

Needs DIGITBOT_TEST_REDIS_URL (scripts/services.sh starts Redis on 127.0.0.1:6379). The test uses
its own Redis database number so it never meets other tests' messages.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.model.network import Checkpoint
from core.recognize import Recognizer
from digitbot.settings import PROJECT_ROOT
from storage.models import SUCCEEDED
from tests.worker.conftest import active_version, add_labelled, job_rows, styled_writer
from worker.config import WorkerConfig
from worker.runner import CeleryDispatcher
from worker.scheduler import Sweeper

REDIS_DB = 11
pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def broker_url() -> str:
    url = os.environ.get("DIGITBOT_TEST_REDIS_URL")
    if not url:
        pytest.skip("DIGITBOT_TEST_REDIS_URL not set (eval \"$(bash scripts/services.sh)\")")
    import redis

    client = redis.Redis.from_url(url, db=REDIS_DB)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {url} unreachable: {exc}")
    client.flushdb()
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{REDIS_DB}"))


@pytest.fixture
def celery_worker(config: WorkerConfig, broker_url: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "DIGITBOT_DATABASE_URL": config.database_url,
           "DIGITBOT_CELERY_BROKER_URL": broker_url, "DIGITBOT_BASE_WEIGHTS": str(config.base_weights),
           "DIGITBOT_FINETUNE_LEASE_S": "30", "PYTHONPATH": str(PROJECT_ROOT)}
    log = (tmp_path / "celery-worker.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "digitbot.cli", "worker", "--celery"], cwd=PROJECT_ROOT,
                               env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    yield process
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    log.close()
    print((tmp_path / "celery-worker.log").read_text()[-3000:])


def test_celery_worker_runs_a_job_end_to_end(config: WorkerConfig, factory: sessionmaker[Session], broker_url: str,
                                             celery_worker: subprocess.Popen[bytes]) -> None:
    if not config.base_weights.exists():
        pytest.skip(f"base weights not found at {config.base_weights}")
    user = styled_writer(seed=3, n=50)
    recognizer = Recognizer(Checkpoint.load(config.base_weights))
    answered = np.array([p.digit for p in recognizer.classify(user.images[:50])])
    add_labelled(factory, 4242, user.images[:50], user.labels[:50], answered=answered)

    told: list[tuple[int, dict[str, Any]]] = []
    scale_out = replace(config, celery_broker_url=broker_url)
    sweeper = Sweeper(scale_out, session_factory=factory, dispatch=CeleryDispatcher(scale_out),
                      notify=lambda telegram_id, summary: told.append((telegram_id, summary)))
    first = sweeper.sweep()
    assert len(first.created) == 1 and first.dispatched == first.created

    deadline = time.monotonic() + 480
    while not told and time.monotonic() < deadline:
        assert celery_worker.poll() is None, "the Celery worker exited"
        time.sleep(1.0)
        sweeper.sweep()  # delivers the notification once the worker has promoted the model
    (job,) = job_rows(factory, 4242)
    assert job.state == SUCCEEDED, f"job is {job.state}: {job.error}"
    assert job.outcome == "promoted+notified", job.metrics.get("reason")
    assert active_version(factory, 4242) == 1
    assert told[0][0] == 4242 and told[0][1]["accuracy_after"] > told[0][1]["accuracy_before"]
