"""Storage benchmark: recording a recognised photo, a user's stats, the users-due query, sizes.

    .venv/bin/python -m bench.bench_storage                       # SQLite only
    .venv/bin/python -m bench.bench_storage --postgres "$DIGITBOT_TEST_POSTGRES_URL"

Each backend gets a fresh database (a temporary SQLite file; a new PostgreSQL schema, dropped at
the end), migrated with Alembic. Baselines measured in the same run: an empty transaction
(BEGIN; SELECT 1; COMMIT) and a one-row insert transaction (the commit floor under any write the bot
makes), a count(*) over all users next to the users-due query.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from sqlalchemy import bindparam, create_engine, insert, make_url, text
from sqlalchemy.orm import Session, sessionmaker

from storage import repository as repo
from storage.db import session_factory, upgrade_to_head
from storage.models import FinetuneJob, Label, Prediction, Reading, Sample, User, utcnow
from storage.records import DigitRecord

SAMPLE_TABLES = ("readings", "samples", "predictions", "labels")


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    """Milliseconds per call, one value per repeat."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def summary(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[min(len(values) - 1, int(0.95 * len(values)))]
    return f"median {statistics.median(values):7.2f} ms  p95 {p95:7.2f} ms  (n={len(values)})"


@contextmanager
def fresh_database(backend: str, postgres_url: str | None) -> Iterator[str]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{Path(tmp) / 'bench.db'}"
            upgrade_to_head(url)
            yield url
        return
    assert postgres_url
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        rendered = (make_url(postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
                    .render_as_string(hide_password=False))
        upgrade_to_head(rendered)
        yield rendered
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def make_digits(count: int, rng: np.random.Generator) -> list[DigitRecord]:
    return [
        DigitRecord(image=rng.integers(0, 256, (28, 28), dtype=np.uint8), digit=int(d), confidence=0.93,
                    source="base", base_digit=int(d), base_confidence=0.93)
        for d in rng.integers(0, 10, count)
    ]


def bench_record(factory: sessionmaker[Session], repeats: int) -> None:
    rng = np.random.default_rng(0)
    with factory.begin() as s:
        repo.get_or_create_user(s, telegram_id=1)

    def empty() -> None:
        with factory.begin() as s:
            s.execute(text("SELECT 1"))

    def one_row() -> None:  # the commit floor: PostgreSQL flushes its WAL to disk on every commit
        with factory.begin() as s:
            repo.mark_update_processed(s, update_id=random.getrandbits(62))

    print(f"  baseline empty transaction      {summary(timed(empty, repeats))}")
    print(f"  baseline one-row insert commit  {summary(timed(one_row, repeats))}")
    for count in (1, 8):
        batches = [make_digits(count, rng) for _ in range(repeats)]
        it = iter(batches)

        def record(it: Iterator[list[DigitRecord]] = it) -> None:
            with factory.begin() as s:
                repo.mark_update_processed(s, update_id=random.getrandbits(62))
                repo.record_reading(s, telegram_id=1, chat_id=1, file_id="AgACAgIAAxkBAAIBf2" * 4,
                                    file_unique_id="AQADx7sxG", digits=next(it))

        print(f"  record_reading {count} digit(s)        {summary(timed(record, repeats))}")


def populate_labels(factory: sessionmaker[Session], *, telegram_id: int, count: int) -> int:
    """``count`` labelled samples for one user, 8 per reading, 10% corrected (bulk inserts)."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (count, 784), dtype=np.uint8)
    truth = rng.integers(0, 10, count)
    answers = np.where(rng.random(count) < 0.1, (truth + 1) % 10, truth)
    now = utcnow()
    with factory.begin() as s:
        user_id = repo.get_or_create_user(s, telegram_id=telegram_id).id
        reading_ids = list(s.scalars(insert(Reading).returning(Reading.id, sort_by_parameter_order=True), [
            {"user_id": user_id, "chat_id": telegram_id, "file_id": "F", "file_unique_id": "U", "status": "ok",
             "created_at": now} for _ in range(count // 8)]))
        sample_ids = list(s.scalars(insert(Sample).returning(Sample.id, sort_by_parameter_order=True), [
            {"user_id": user_id, "reading_id": reading_ids[i // 8], "position": i % 8,
             "image": images[i].tobytes(), "created_at": now} for i in range(count)]))
        s.execute(insert(Prediction), [
            {"sample_id": sid, "user_id": user_id, "digit": int(answers[i]), "confidence": 0.9,
             "source": "base", "base_digit": int(answers[i]), "base_confidence": 0.9, "created_at": now}
            for i, sid in enumerate(sample_ids)])
        s.execute(insert(Label), [
            {"sample_id": sid, "user_id": user_id, "digit": int(truth[i]),
             "kind": "confirmed" if truth[i] == answers[i] else "corrected", "created_at": now,
             "answer": int(answers[i]), "base_answer": int(answers[i]), "personal": False, "recorded_at": now}
            for i, sid in enumerate(sample_ids)])
    return user_id


def database_bytes(factory: sessionmaker[Session], backend: str, tables: tuple[str, ...]) -> int:
    with factory.begin() as s:
        if backend == "postgresql":
            s.execute(text("ANALYZE"))
            return sum(s.execute(text("SELECT pg_total_relation_size(:t)"), {"t": t}).scalar_one()
                       for t in tables)
        return int(s.execute(text("SELECT sum(pgsize) FROM dbstat WHERE name IN "
                                  "(SELECT name FROM sqlite_master WHERE tbl_name IN :t)")
                              .bindparams(bindparam("t", expanding=True)),
                              {"t": list(tables)}).scalar_one() or 0)


def bench_stats(factory: sessionmaker[Session], backend: str, labels: int, repeats: int) -> None:
    before = database_bytes(factory, backend, SAMPLE_TABLES)
    populate_labels(factory, telegram_id=2, count=labels)
    after = database_bytes(factory, backend, SAMPLE_TABLES)

    def stats() -> None:
        with factory() as s:
            result = repo.user_stats(s, telegram_id=2)
            assert result.labelled == labels

    stats()  # warm caches
    cpu: list[float] = []

    def stats_cpu() -> None:
        start = time.process_time()
        stats()
        cpu.append((time.process_time() - start) * 1000)

    wall = timed(stats_cpu, repeats)
    # CPU time of this process (SQLite runs in it): what the call costs without waiting for a core.
    print(f"  user_stats, {labels} labels      {summary(wall)}; this process's CPU median "
          f"{statistics.median(cpu):.2f} ms")
    if backend == "postgresql":
        print(f"  user_stats' row query, server execution time (EXPLAIN ANALYZE) median "
              f"{statistics.median(server_ms(factory, telegram_id=2) for _ in range(5)):.2f} ms")
    print(f"  size per 1,000 labelled samples (reading + sample + prediction + label rows, indexes): "
          f"{(after - before) / labels * 1000 / 1e6:.3f} MB")


def server_ms(factory: sessionmaker[Session], *, telegram_id: int) -> float:
    """PostgreSQL's own execution time for user_stats' main query (no client, no network)."""
    from storage.repository._common import user_id_for
    from storage.repository.stats import _stats_rows_query

    with factory() as s:
        user_id = user_id_for(s, telegram_id)
        assert user_id is not None
        query = _stats_rows_query(s, user_id).compile(s.get_bind(), compile_kwargs={"literal_binds": True})
        plan = [row[0] for row in s.execute(text(f"EXPLAIN (ANALYZE) {query}"))]
    return float(next(line for line in plan if line.startswith("Execution Time")).split()[2])


def personal_weights() -> bytes:
    """A realistic personal checkpoint: the trainable head of DigitNet, as core saves it."""
    import torch

    from core.model.network import FROZEN_PREFIXES, DigitNet

    state = {k: v for k, v in DigitNet().state_dict().items() if not k.startswith(FROZEN_PREFIXES)}
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "meta": {"temperature": 1.0}}, buffer)
    return buffer.getvalue()


def bench_model_versions(factory: sessionmaker[Session], backend: str, count: int = 10) -> None:
    blob = personal_weights()
    before = database_bytes(factory, backend, ("model_versions",))
    with factory.begin() as s:
        user_id = repo.get_or_create_user(s, telegram_id=3).id
    times = []
    for _ in range(count):
        start = time.perf_counter()
        with factory.begin() as s:
            version = repo.add_model_version(s, user_id=user_id, parent_id=None, weights=blob, metrics={})
            repo.promote_model_version(s, user_id=user_id, version_id=version.id)
        times.append((time.perf_counter() - start) * 1000)
    after = database_bytes(factory, backend, ("model_versions",))
    with factory() as s:
        active = repo.active_model_version(s, user_id=user_id)
        assert active is not None
        load = timed(lambda: repo.load_weights(s, user_id=user_id, version_id=active.id), count)
    print(f"  add + promote a model version   {summary(times)}")
    print(f"  load_weights                    {summary(load)}")
    print(f"  size per model version: {(after - before) / count / 1e6:.3f} MB "
          f"(weights {len(blob) / 1e6:.3f} MB)")


def bench_users_due(factory: sessionmaker[Session], users: int, repeats: int) -> None:
    rng = np.random.default_rng(2)
    new_labels = rng.integers(0, 30, users)
    now = utcnow()
    with factory.begin() as s:
        ids = list(s.scalars(insert(User).returning(User.id, sort_by_parameter_order=True), [
            {"telegram_id": 10_000_000 + i, "language": "zh", "created_at": now,
             "labels_since_finetune": int(n)} for i, n in enumerate(new_labels)]))
        open_jobs = rng.choice(len(ids), users // 20, replace=False)
        s.execute(insert(FinetuneJob), [
            {"user_id": ids[i], "state": "queued", "attempts": 0, "created_at": now, "metrics": {}}
            for i in open_jobs])
        s.execute(text("ANALYZE"))

    def due() -> None:
        with factory() as s:
            result = repo.users_due_for_finetune(s, min_labels=10, limit=1000)
            assert result and len(result) <= 1000

    def count_users() -> None:
        with factory() as s:
            s.execute(text("SELECT count(*) FROM users")).scalar_one()

    due()
    print(f"  baseline count(*) over users    {summary(timed(count_users, repeats))}")
    print(f"  users_due_for_finetune ({users:,} users, {int((new_labels >= 10).sum()):,} due, "
          f"limit 1000) {summary(timed(due, repeats))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", default=None, help="PostgreSQL URL (a schema is created and dropped)")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--labels", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=100_000)
    args = parser.parse_args()
    backends = ["sqlite"] + (["postgresql"] if args.postgres else [])
    for backend in backends:
        with fresh_database(backend, args.postgres) as url:
            factory = session_factory(url)
            print(f"{backend}:")
            bench_record(factory, args.repeats)
            bench_stats(factory, backend, args.labels, max(20, args.repeats // 10))
            bench_model_versions(factory, backend)
            bench_users_due(factory, args.users, max(20, args.repeats // 10))
            factory.kw["bind"].dispose()


if __name__ == "__main__":
    main()
