"""Scale-out faults for real (issue 13 item 4): a Celery prefork worker SIGKILLed mid fine-tune, the
Redis broker killed mid-task.

Each test runs real `digitbot worker --celery` processes (prefork pool, worker/celery_app.py's
configuration; tests/worker/celery_child.py swaps only the trainer for one that holds the job while
the test acts) against a private `redis-server` on a free port (never the shared one: a test that
kills its broker must not take other tests' messages with it) and the test database (PostgreSQL
when DIGITBOT_TEST_POSTGRES_URL is set, else SQLite). The test plays the bot's part: the fine-tune
sweep with the Celery dispatcher, every half second. The job table is the source of truth: a job
must end succeeded exactly once and the user must have exactly one active model.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from digitbot.settings import PROJECT_ROOT
from storage import repository as repo
from storage.models import QUEUED, RUNNING, SUCCEEDED
from tests.storage.conftest import POSTGRES_URL, new_postgres_schema_url
from tests.worker.conftest import active_version, add_labelled, job_rows, random_digits
from tests.worker.test_faults import inline_dispatch
from worker.config import WorkerConfig
from worker.runner import CeleryDispatcher
from worker.scheduler import Sweeper

pytestmark = [pytest.mark.redis, pytest.mark.slow]
LEASE_S = 4.0  # the workers' and the sweep's lease: a dead worker's job is re-queued after this
SWEEP_EVERY_S = 0.5


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """PostgreSQL (production's scale-out database) when available, else a SQLite file."""
    if not POSTGRES_URL:
        yield f"sqlite:///{tmp_path / 'digitbot.db'}"
        return
    url, drop = new_postgres_schema_url()
    try:
        yield url
    finally:
        drop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A private, non-persistent redis-server that the test can SIGKILL and start again (same port)."""

    def __init__(self, binary: str, log_dir: Path) -> None:
        self.binary, self.log_dir = binary, log_dir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        import redis

        self.starts += 1
        log = (self.log_dir / f"redis.{self.starts}.log").open("wb")
        self.proc = subprocess.Popen([self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                                      "--appendonly", "no"], stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                assert self.proc.poll() is None, (self.log_dir / f"redis.{self.starts}.log").read_text()
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if not os.environ.get("DIGITBOT_TEST_REDIS_URL"):
        pytest.skip("DIGITBOT_TEST_REDIS_URL not set (eval \"$(bash scripts/services.sh)\")")
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed here: these tests kill and restart a private one "
                    "(apt-get install redis-server, as scripts/services.sh does)")
    server = RedisServer(binary, tmp_path)
    server.start()
    yield server
    server.stop()


class Workers:
    """`digitbot worker --celery` processes (tests.worker.celery_child), each in its own process group."""

    def __init__(self, config: WorkerConfig, broker_url: str, tmp_path: Path) -> None:
        self.control = tmp_path / "control"
        self.control.mkdir()
        self.tmp_path = tmp_path
        self.env = {**os.environ, "DIGITBOT_DATABASE_URL": config.database_url,
                    "DIGITBOT_CELERY_BROKER_URL": broker_url, "DIGITBOT_BASE_WEIGHTS": str(config.base_weights),
                    "DIGITBOT_FINETUNE_LEASE_S": str(LEASE_S), "DIGITBOT_FINETUNE_BATCH_SIZE": "1",
                    "DIGITBOT_DATA_DIR": str(tmp_path), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
        self.procs: list[subprocess.Popen[bytes]] = []

    def hold(self, on: bool) -> None:
        """While on, a job's training goes on (real optimiser steps) until the test releases it."""
        flag = self.control / "hold"
        flag.touch() if on else flag.unlink(missing_ok=True)

    def start(self) -> subprocess.Popen[bytes]:
        log = (self.tmp_path / f"celery-worker.{len(self.procs) + 1}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "tests.worker.celery_child", str(self.control)],
                                cwd=PROJECT_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def training_pids(self) -> set[int]:
        """Pool processes that started training a job (the marker celery_child writes)."""
        return {int(p.name.split("-")[1]) for p in self.control.glob("training-*")}

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
        for log in sorted(self.tmp_path.glob("celery-worker.*.log")):
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}")


@pytest.fixture
def scale_out(config: WorkerConfig, redis_server: RedisServer) -> WorkerConfig:
    return replace(config, celery_broker_url=redis_server.url, finetune_lease_s=LEASE_S)


@pytest.fixture
def workers(scale_out: WorkerConfig, redis_server: RedisServer, tmp_path: Path) -> Iterator[Workers]:
    group = Workers(scale_out, redis_server.url, tmp_path)
    yield group
    group.close()


def sweep_until(sweeper: Sweeper, done: Callable[[], bool], *, timeout: float, what: str,
                alive: list[subprocess.Popen[bytes]] | None = None) -> None:
    """The bot's part: sweep (re-queue stale jobs, publish queued ones) until `done()`."""
    deadline = time.monotonic() + timeout
    while not done():
        for proc in alive or []:
            assert proc.poll() is None, f"a Celery worker exited ({proc.returncode})"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        sweeper.sweep()
        time.sleep(SWEEP_EVERY_S)


def wait_for(done: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def models_of(factory: sessionmaker[Session], telegram_id: int) -> list[tuple[int, str]]:
    """(version, status) of every model version the user has."""
    with factory() as session:
        user = repo.get_user(session, telegram_id=telegram_id)
        assert user is not None
        return [(v.version, v.status) for v in repo.model_versions(session, user_id=user.id)]


def active_count(factory: sessionmaker[Session], telegram_id: int) -> int:
    return sum(status == "active" for _, status in models_of(factory, telegram_id))


def test_prefork_worker_sigkilled_mid_finetune_job_completes_once(
        config: WorkerConfig, scale_out: WorkerConfig, factory: sessionmaker[Session], workers: Workers) -> None:
    telegram_id = 7001
    add_labelled(factory, telegram_id, *random_digits(12, seed=1))
    Sweeper(config, session_factory=factory, dispatch=inline_dispatch(config, factory)).sweep()
    assert active_version(factory, telegram_id) == 1  # the model the kills must leave alone
    add_labelled(factory, telegram_id, *random_digits(12, seed=2))

    workers.hold(True)
    first = workers.start()
    sweeper = Sweeper(scale_out, session_factory=factory, dispatch=CeleryDispatcher(scale_out))
    report = sweeper.sweep()
    (job_id,) = report.created
    assert report.dispatched == [job_id]

    def job() -> tuple[str, int]:
        row = job_rows(factory, telegram_id)[-1]
        assert row.id == job_id
        return row.state, row.attempts

    # 1. SIGKILL the prefork pool process that is training the job. The worker's main process
    # survives and forks a new pool process; the dead attempt's lease runs out, the sweep re-queues
    # the job and publishes it again, and the new pool process claims it (attempt 2).
    wait_for(lambda: bool(workers.training_pids()), timeout=90, what="the first worker to start training")
    (pool_pid,) = workers.training_pids()
    assert pool_pid != first.pid  # a pool process, not the worker's main process
    assert job() == (RUNNING, 1)
    os.kill(pool_pid, signal.SIGKILL)
    sweep_until(sweeper, lambda: len(workers.training_pids()) == 2, timeout=45, alive=[first],
                what="a new pool process to train the re-queued job")
    assert job() == (RUNNING, 2)
    assert models_of(factory, telegram_id) == [(1, "active")]  # the dead attempt wrote nothing

    # 2. SIGKILL the whole worker (main process and pool: the machine is gone) and start another.
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    assert job() == (RUNNING, 2) and models_of(factory, telegram_id) == [(1, "active")]
    workers.hold(False)
    second = workers.start()
    sweep_until(sweeper, lambda: job()[0] == SUCCEEDED, timeout=60, alive=[second],
                what="the job to succeed on the second worker")

    row = job_rows(factory, telegram_id)[-1]
    assert (row.state, row.attempts, row.outcome) == (SUCCEEDED, 3, "promoted")
    # A late or duplicate delivery (the killed worker's message comes back after Redis's
    # visibility timeout) finds the job finished and trains nothing: give stray messages a moment.
    for _ in range(6):
        sweeper.sweep()
        time.sleep(SWEEP_EVERY_S)
    assert models_of(factory, telegram_id) == [(1, "retired"), (2, "active")]  # one new model, once
    assert active_count(factory, telegram_id) == 1
    assert active_version(factory, telegram_id) == 2
    assert [j.state for j in job_rows(factory, telegram_id)] == [SUCCEEDED, SUCCEEDED]
    assert second.poll() is None


def test_redis_killed_mid_task_jobs_recover(
        scale_out: WorkerConfig, factory: sessionmaker[Session], workers: Workers, redis_server: RedisServer) -> None:
    running_user, waiting_user, late_user = 7101, 7102, 7103
    for seed, user in enumerate((running_user, waiting_user), start=10):
        add_labelled(factory, user, *random_digits(12, seed=seed))
    sweeper = Sweeper(scale_out, session_factory=factory, dispatch=CeleryDispatcher(scale_out))

    workers.hold(True)
    worker = workers.start()
    report = sweeper.sweep()
    assert len(report.created) == 2 and report.dispatched == report.created
    wait_for(lambda: bool(workers.training_pids()), timeout=90, what="the worker to start training")
    # One job is being trained (its message unacked), the other waits in Redis's queue (the worker
    # prefetches nothing beyond the task it runs).
    states = {u: job_rows(factory, u)[-1].state for u in (running_user, waiting_user)}
    assert sorted(states.values()) == [QUEUED, RUNNING], states
    training = next(u for u, s in states.items() if s == RUNNING)
    queued_in_redis = next(u for u, s in states.items() if s == QUEUED)

    # Redis dies (SIGKILL, nothing persisted): the queued job's message is gone with it.
    redis_server.kill()
    add_labelled(factory, late_user, *random_digits(12, seed=12))
    down = sweeper.sweep()  # a job created while Redis is down stays queued in the database
    assert len(down.created) == 1 and down.dispatched == []
    assert job_rows(factory, late_user)[-1].state == QUEUED

    # The task in progress is not disturbed: it finishes and commits while the broker is down.
    workers.hold(False)
    wait_for(lambda: job_rows(factory, training)[-1].state == SUCCEEDED, timeout=60,
             what="the job in progress to finish while Redis is down")
    assert worker.poll() is None

    # Redis comes back empty. The worker reconnects; the sweep publishes the job created during the
    # outage and again the one whose message Redis lost; each runs once.
    redis_server.start()
    users = (running_user, waiting_user, late_user)
    sweep_until(sweeper, lambda: all(job_rows(factory, u)[-1].state == SUCCEEDED for u in users),
                timeout=60, alive=[worker], what=f"every job to succeed after Redis restarted ({queued_in_redis} "
                f"lost its message, {late_user} was created during the outage)")
    for _ in range(4):
        sweeper.sweep()
        time.sleep(SWEEP_EVERY_S)
    for user in users:
        (job,) = job_rows(factory, user)
        assert (job.state, job.attempts, job.outcome) == (SUCCEEDED, 1, "promoted"), user
        assert models_of(factory, user) == [(1, "active")], user
