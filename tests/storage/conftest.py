"""Storage fixtures: every test gets a freshly migrated database, SQLite always and PostgreSQL when
DIGITBOT_TEST_POSTGRES_URL is set (each test in its own schema, dropped afterwards)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.orm import Session, sessionmaker

from storage.db import session_factory, upgrade_to_head
from storage.records import DigitRecord

POSTGRES_URL = os.environ.get("DIGITBOT_TEST_POSTGRES_URL")

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(
        "postgresql",
        id="postgresql",
        marks=[
            pytest.mark.postgres,
            pytest.mark.skipif(not POSTGRES_URL, reason="DIGITBOT_TEST_POSTGRES_URL not set"),
        ],
    ),
]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite file migrated with Alembic; each test copies it (faster than migrating again)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade_to_head(f"sqlite:///{path}")
    return path


def new_postgres_schema_url() -> tuple[str, Callable[[], None]]:
    """A URL whose connections use a brand-new schema, and a function that drops it."""
    assert POSTGRES_URL
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    return url.render_as_string(hide_password=False), drop


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path / "digitbot.db"
        shutil.copyfile(sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    url, drop = new_postgres_schema_url()
    upgrade_to_head(url)
    try:
        yield url
    finally:
        drop()


@pytest.fixture
def factory(db_url: str) -> Iterator[sessionmaker[Session]]:
    made = session_factory(db_url, max_samples_per_user=100)
    yield made
    made.kw["bind"].dispose()


@pytest.fixture
def backend(db_url: str) -> str:
    return make_url(db_url).get_backend_name()


def crop(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(28, 28), dtype=np.uint8)


def digits(answers: str, *, base: str | None = None, source: str = "base",
           model_version_id: int | None = None) -> list[DigitRecord]:
    """DigitRecords answering ``answers`` (base model answering ``base``, default the same)."""
    base = base or answers
    return [
        DigitRecord(image=crop(i * 31 + int(a)), digit=int(a), confidence=0.9, source=source,
                    base_digit=int(b), base_confidence=0.8, model_version_id=model_version_id)
        for i, (a, b) in enumerate(zip(answers, base, strict=True))
    ]
