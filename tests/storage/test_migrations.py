from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from digitbot.settings import Settings
from digitbot.wiring import open_database
from storage.db import downgrade, upgrade_to_head
from storage.models import Base
from tests.storage.conftest import BACKENDS, new_postgres_schema_url

HEAD = "0007"


@pytest.fixture(params=BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    url, drop = new_postgres_schema_url()
    try:
        yield url
    finally:
        drop()


def test_upgrade_head_then_downgrade_base(empty_url: str) -> None:
    engine = create_engine(empty_url)
    try:
        upgrade_to_head(empty_url)
        with engine.connect() as conn:
            # The migrated schema is exactly what the models describe.
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
            assert set(inspect(conn).get_table_names()) == {t.name for t in Base.metadata.sorted_tables} | {
                "alembic_version"}
        downgrade(empty_url, "base")
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
        upgrade_to_head(empty_url)  # and back up again
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD
    finally:
        engine.dispose()


def test_embedded_sqlite_migrates_itself_in_wal_mode(tmp_path: Path) -> None:
    factory = open_database(Settings(data_dir=tmp_path / "data", database_url=None))
    with factory() as s:
        assert s.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert s.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert "users" in inspect(s.connection()).get_table_names()
    factory.kw["bind"].dispose()
    assert (tmp_path / "data" / "digitbot.db").exists()


def test_cli_db_upgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    done = subprocess.run([sys.executable, "-m", "digitbot.cli", "db", "upgrade", "--url", url],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD
    engine.dispose()


def test_a_server_database_must_be_migrated_first(empty_url: str) -> None:
    from storage.db import SchemaOutOfDate

    settings = Settings(database_url=empty_url)
    with pytest.raises(SchemaOutOfDate, match="digitbot db upgrade"):
        open_database(settings, upgrade=False)
    upgrade_to_head(empty_url)
    open_database(settings, upgrade=False).kw["bind"].dispose()


def test_0002_backfills_labels_from_their_predictions(empty_url: str) -> None:
    from alembic import command

    from storage.db import alembic_config

    command.upgrade(alembic_config(empty_url), "0001")
    engine = create_engine(empty_url)
    try:
        with engine.begin() as conn:
            now = "2026-11-20 08:00:00+00:00"
            conn.execute(text("INSERT INTO users (id, telegram_id, settings, created_at, labels_since_finetune) "
                              "VALUES (1, 5, '{}', :t, 1)"), {"t": now})
            conn.execute(text("INSERT INTO readings (id, user_id, chat_id, file_id, file_unique_id, status, "
                              "created_at) VALUES (1, 1, 5, 'F', 'U', 'ok', :t)"), {"t": now})
            conn.execute(text("INSERT INTO samples (id, user_id, reading_id, position, image, created_at) "
                              "VALUES (1, 1, 1, 0, :img, :t)"), {"img": b"\0" * 784, "t": now})
            conn.execute(text("INSERT INTO predictions (sample_id, user_id, digit, confidence, source, "
                              "base_digit, base_confidence, created_at) VALUES (1, 1, 7, 0.9, 'personal', 1, 0.6, :t)"),
                         {"t": now})
            conn.execute(text("INSERT INTO labels (sample_id, user_id, digit, kind, created_at) "
                              "VALUES (1, 1, 1, 'corrected', :t)"), {"t": now})
        upgrade_to_head(empty_url)
        with engine.connect() as conn:
            answer, base_answer, personal = conn.execute(
                text("SELECT answer, base_answer, personal FROM labels")).one()
        assert (answer, base_answer, bool(personal)) == (7, 1, True)
        from storage import repository as repo
        from storage.db import session_factory

        factory = session_factory(empty_url)
        with factory() as s:
            stats = repo.user_stats(s, telegram_id=5)
            assert (stats.labelled, stats.correct, stats.base_correct, stats.personal_answers) == (1, 0, 1, 1)
            assert stats.buckets[0].start.isoformat() == "2026-11-20T08:00:00+00:00"
        factory.kw["bind"].dispose()
    finally:
        engine.dispose()


def test_0004_adds_true_text_to_existing_readings(empty_url: str) -> None:
    from alembic import command

    from storage.db import alembic_config

    command.upgrade(alembic_config(empty_url), "0003")
    engine = create_engine(empty_url)
    try:
        with engine.begin() as conn:
            now = "2026-11-20 08:00:00+00:00"
            conn.execute(text("INSERT INTO users (id, telegram_id, settings, created_at, labels_since_finetune) "
                              "VALUES (1, 5, '{}', :t, 0)"), {"t": now})
            conn.execute(text("INSERT INTO readings (id, user_id, chat_id, file_id, file_unique_id, status, "
                              "created_at) VALUES (1, 1, 5, 'F', 'U', 'ok', :t)"), {"t": now})
            conn.execute(text("INSERT INTO samples (id, user_id, reading_id, position, image, created_at) "
                              "VALUES (1, 1, 1, 0, :image, :t)"), {"image": b"\0" * 784, "t": now})
        upgrade_to_head(empty_url)
        with engine.begin() as conn:
            assert conn.execute(text("SELECT true_text FROM readings")).scalar_one() is None
            conn.execute(text("UPDATE readings SET true_text = '42711'"))
        downgrade(empty_url, "0003")
        with engine.connect() as conn:
            assert "true_text" not in {c["name"] for c in inspect(conn).get_columns("readings")}
            assert conn.execute(text("SELECT file_id FROM readings")).scalar_one() == "F"
            # the readings' crops survive (rebuilding the table would cascade-delete them)
            assert conn.execute(text("SELECT count(*) FROM samples")).scalar_one() == 1
    finally:
        engine.dispose()


def test_0005_marks_users_who_used_their_private_chat_as_started(empty_url: str) -> None:
    from alembic import command

    from storage.db import alembic_config

    command.upgrade(alembic_config(empty_url), "0004")
    engine = create_engine(empty_url)
    try:
        with engine.begin() as conn:
            now = "2026-11-20 08:00:00+00:00"
            for user_id, telegram_id in ((1, 5), (2, 6), (3, 7)):
                conn.execute(text("INSERT INTO users (id, telegram_id, settings, created_at, labels_since_finetune) "
                                  "VALUES (:id, :tg, '{}', :t, 0)"), {"id": user_id, "tg": telegram_id, "t": now})
            # user 5 sent a photo in their private chat, user 6 only in a group, user 7 never
            for reading_id, user_id, chat_id in ((1, 1, 5), (2, 1, -100), (3, 2, -100)):
                conn.execute(text("INSERT INTO readings (id, user_id, chat_id, file_id, file_unique_id, status, "
                                  "created_at) VALUES (:id, :u, :c, 'F', 'U', 'ok', :t)"),
                             {"id": reading_id, "u": user_id, "c": chat_id, "t": now})
        upgrade_to_head(empty_url)
        from storage import repository as repo
        from storage.db import session_factory

        factory = session_factory(empty_url)
        with factory() as s:
            assert [repo.started_private(s, telegram_id=t) for t in (5, 6, 7, 8)] == [True, False, False, False]
            user = repo.get_user(s, telegram_id=5)
            assert user is not None and user.started_private_at is not None
            assert user.started_private_at.isoformat() == "2026-11-20T08:00:00+00:00"
        factory.kw["bind"].dispose()
        downgrade(empty_url, "0004")
        with engine.connect() as conn:
            assert "started_private_at" not in {c["name"] for c in inspect(conn).get_columns("users")}
            assert conn.execute(text("SELECT count(*) FROM readings")).scalar_one() == 3  # nothing cascaded
    finally:
        engine.dispose()
