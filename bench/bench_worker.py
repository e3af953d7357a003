"""Fine-tune worker overhead: the sweep over many users and the per-job database work.

What the worker adds around the training itself, measured with a stand-in trainer that returns a
fixed head (so the figures are the scheduler's and the job's own cost, not the model's):
* sweep over U users with enough new labels: creating U jobs, then an idle sweep (nothing due);
* one job end to end without training: claim, load 100 labelled samples, store + promote the
  model version, finish (ms per job), run one after another by the embedded worker's code path.

    .venv/bin/python -m bench.bench_worker [--users 1000] [--jobs 100] [--database-url URL]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import create_engine, insert, make_url, text

from core.model.network import Checkpoint, DigitNet
from core.personal.finetune import FinetuneMetrics, FinetuneResult, GateDecision, head_state
from digitbot.settings import Settings
from digitbot.wiring import open_database, worker_config
from storage import repository as repo
from storage.models import User, utcnow
from storage.records import DigitRecord
from worker import jobs
from worker.scheduler import Sweeper

HEAD = head_state(DigitNet().state_dict())


def instant_trainer(base: Checkpoint, images: np.ndarray, labels: np.ndarray, **_: Any) -> FinetuneResult:
    checkpoint = Checkpoint(state_dict=HEAD, meta={"kind": "personal", "temperature": 1.0, "threshold": 0.9})
    metrics = FinetuneMetrics(heldout_before=0.5, heldout_after=0.9, n_labels=len(labels))
    return FinetuneResult(checkpoint, GateDecision(True, "bench"), metrics)


def add_user_with_labels(factory: Any, telegram_id: int, count: int, rng: np.random.Generator) -> None:
    digits = [DigitRecord(image=rng.integers(0, 256, (28, 28), dtype=np.uint8), digit=1, confidence=0.9,
                          source="base", base_digit=1, base_confidence=0.9) for _ in range(count)]
    with factory.begin() as session:
        reading = repo.record_reading(session, telegram_id=telegram_id, chat_id=telegram_id, file_id="f",
                                      file_unique_id="u", digits=digits)
        repo.label_reading(session, telegram_id=telegram_id, reading_id=reading.reading_id,
                           digits="".join(str(d) for d in rng.integers(0, 10, count)))


@contextlib.contextmanager
def scratch_database(url: str | None, tmp: str) -> Iterator[str]:
    """A fresh SQLite file, or a fresh schema (dropped afterwards) in the given PostgreSQL database."""
    if url is None:
        yield f"sqlite:///{Path(tmp) / 'bench.db'}"
        return
    schema = f"bench_worker_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield make_url(url).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--database-url", default=None,
                        help="PostgreSQL URL (a scratch schema is created and dropped); default: a SQLite file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, scratch_database(args.database_url, tmp) as url:
        settings = Settings(database_url=url, data_dir=Path(tmp), finetune_min_labels=10, celery_broker_url=None)
        factory = open_database(settings, upgrade=True)
        rng = np.random.default_rng(0)

        # Users due for a fine-tune: the counter the labels keep, set directly for speed.
        with factory.begin() as session:
            session.execute(insert(User), [
                {"telegram_id": 10_000_000 + i, "created_at": utcnow(), "labels_since_finetune": 12}
                for i in range(args.users)])
        sweeper = Sweeper(worker_config(settings), session_factory=factory, dispatch=lambda ids: [])
        started = time.perf_counter()
        created = sweeper.sweep().created
        create_s = time.perf_counter() - started
        started = time.perf_counter()
        sweeper.sweep()
        idle_s = time.perf_counter() - started
        print(f"database: {factory.kw['bind'].url.get_backend_name()}")
        print(f"sweep creating {len(created)} jobs: {create_s * 1000:.0f} ms "
              f"({create_s / max(1, len(created)) * 1000:.2f} ms per job); idle sweep with "
              f"{len(created)} queued: {idle_s * 1000:.1f} ms")

        # Jobs end to end with 100 labels each, without training.
        job_users = [20_000_000 + i for i in range(args.jobs)]
        for telegram_id in job_users:
            add_user_with_labels(factory, telegram_id, 100, rng)
        with factory.begin() as session:
            for telegram_id in job_users:
                user = repo.get_user(session, telegram_id=telegram_id)
                assert user is not None
                job = repo.create_finetune_job(session, user_id=user.id)
                assert job is not None
                created.append(job.id)
        job_ids = created[-args.jobs:]
        base = Checkpoint(state_dict=DigitNet().state_dict())
        times = []
        for job_id in job_ids:
            started = time.perf_counter()
            outcome = jobs.run_job(job_id, config=worker_config(settings), worker_id="bench", session_factory=factory,
                                   base=base, device="cpu", trainer=instant_trainer)
            times.append(time.perf_counter() - started)
            assert outcome.state == jobs.PROMOTED, outcome
        times_ms = sorted(t * 1000 for t in times)
        print(f"{len(times)} jobs (100 labels each, no training): median {statistics.median(times_ms):.1f} ms, "
              f"p95 {times_ms[int(0.95 * (len(times_ms) - 1))]:.1f} ms per job "
              f"({len(times) / sum(times) * 60:.0f} jobs/minute of worker overhead)")
        factory.kw["bind"].dispose()


if __name__ == "__main__":
    main()
