"""Engines and sessions: SQLite (WAL, foreign keys, busy timeout) or PostgreSQL (pooled).

Sessions come from :func:`session_factory` / :func:`init_db`. Use one short transaction per unit
of work and never hold a session across inference or training::

    Session = init_db(url, weights_dir=..., max_samples_per_user=...)   # digitbot.wiring.open_database
    with Session.begin() as session:        # commits on success, rolls back on error
        repository.record_reading(session, ...)

The factory's ``info`` carries the storage options the repository needs (``weights_dir``,
``max_samples_per_user``); every session copies it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

# What the layers above take to open transactions (they name no SQLAlchemy type themselves).
SessionFactory = sessionmaker[Session]

# Shipped inside the package (package data), so an installed wheel migrates as the checkout does.
# Wheels install unzipped: the resource is a real directory, which Alembic needs.
MIGRATIONS_DIR = Path(str(resources.files("storage") / "migrations"))
SQLITE_BUSY_TIMEOUT_MS = 10_000
# PostgreSQL over a network that can fail (libpq parameters; the URL's query wins): a new connection
# gives up after 5 s, and a peer that went silent is noticed by TCP keepalives / tcp_user_timeout,
# so a request fails (the user is asked to try again) instead of hanging for the OS's ~2 h default.
# A connection dropped while pooled is replaced at checkout (pool_pre_ping).
POSTGRES_CONNECT_ARGS: dict[str, int] = {
    "connect_timeout": 5, "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
    "keepalives_count": 3, "tcp_user_timeout": 60_000,
}


def _is_memory_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def create_db_engine(url: str | URL, *, echo: bool = False) -> Engine:
    """An engine with this project's connection settings for SQLite or PostgreSQL."""
    url = make_url(url)
    if url.get_backend_name() != "sqlite":
        connect_args: dict[str, Any] = {}
        if url.get_backend_name() == "postgresql" and url.get_driver_name() in ("psycopg", "psycopg2"):
            connect_args = {k: v for k, v in POSTGRES_CONNECT_ARGS.items() if k not in url.query}
        return create_engine(url, echo=echo, pool_size=5, max_overflow=10, pool_pre_ping=True,
                             connect_args=connect_args)

    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
    if _is_memory_sqlite(url):
        kwargs["poolclass"] = StaticPool
    else:
        Path(url.database or "").parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, echo=echo, **kwargs)

    @event.listens_for(engine, "connect")
    def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, issue BEGIN (see the "begin" hook below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not _is_memory_sqlite(url):
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn: Any) -> None:
        # Take the write lock up front: a deferred transaction that reads and then writes fails
        # with SQLITE_BUSY (no waiting) when another writer committed in between; IMMEDIATE waits.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def session_factory(
    url: str | URL,
    *,
    weights_dir: Path | None = None,
    max_samples_per_user: int | None = None,
    echo: bool = False,
) -> sessionmaker[Session]:
    """A session factory bound to a new engine; ``factory.kw['bind']`` is the engine."""
    engine = create_db_engine(url, echo=echo)
    info = {"weights_dir": Path(weights_dir) if weights_dir else None,
            "max_samples_per_user": max_samples_per_user}
    return sessionmaker(bind=engine, expire_on_commit=False, info=info)


def init_db(url: str | URL, *, weights_dir: Path | None = None, max_samples_per_user: int | None = None,
            upgrade: bool | None = None) -> SessionFactory:
    """The application's session factory, on a database at the latest schema. ``upgrade`` defaults
    to True for SQLite (the embedded default migrates itself at start-up); PostgreSQL is migrated
    with ``digitbot db upgrade``, and refused here when it is not at the latest migration."""
    if upgrade is None:
        upgrade = make_url(url).get_backend_name() == "sqlite"
    if upgrade:
        upgrade_to_head(url)
    factory = session_factory(url, weights_dir=weights_dir, max_samples_per_user=max_samples_per_user)
    if not upgrade:
        ensure_at_head(factory.kw["bind"])
    return factory


class SchemaOutOfDate(RuntimeError):
    """The database is not at the latest migration (run ``digitbot db upgrade``)."""


def ensure_at_head(engine: Engine) -> None:
    """Refuse to start on a database whose schema is older or newer than this code's migrations."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    if current != head:
        raise SchemaOutOfDate(
            f"database schema is at revision {current or 'none'}, this code needs {head}: "
            "run `digitbot db upgrade`"
        )


def alembic_config(url: str | URL | None = None) -> Config:
    """Alembic configuration for ``storage/migrations/``; without a URL env.py uses the settings' URL."""
    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Called from the application: leave its logging alone. alembic.ini's fileConfig would replace
    # the root handlers, and with them the filter that redacts the bot token (bot/handlers/errors.py).
    config.attributes["configure_logger"] = False
    if url is not None:
        rendered = make_url(url).render_as_string(hide_password=False)
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def upgrade_to_head(url: str | URL | None = None) -> None:
    """Apply every migration (``alembic upgrade head``)."""
    if url is not None and make_url(url).get_backend_name() == "sqlite" and not _is_memory_sqlite(
        make_url(url)
    ):
        Path(make_url(url).database or "").parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), "head")


def downgrade(url: str | URL | None = None, revision: str = "base") -> None:
    """Revert migrations down to ``revision`` (``alembic downgrade base`` by default)."""
    command.downgrade(alembic_config(url), revision)
