"""Helpers shared by the repository modules."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage.models import User


def insert_ignore(session: Session, table: Table, values: dict[str, Any]) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING on either backend; True when a row was inserted."""
    dialect = session.get_bind().dialect.name
    module: Any = postgresql if dialect == "postgresql" else sqlite
    statement = module.insert(table).values(**values).on_conflict_do_nothing()
    # RETURNING, not rowcount: psycopg reports rowcount -1 for this statement.
    returned = session.execute(statement.returning(*table.primary_key.columns)).first()
    return returned is not None


def user_id_for(session: Session, telegram_id: int) -> int | None:
    return session.scalar(select(User.id).where(User.telegram_id == telegram_id))


def lock_user(session: Session, user_id: int) -> User | None:
    """Load the user row with a row lock (PostgreSQL) so per-user writes serialise.

    SQLite needs no row lock: every transaction there starts with BEGIN IMMEDIATE.
    """
    return session.scalars(
        select(User).where(User.id == user_id).with_for_update().execution_options(populate_existing=True)
    ).one_or_none()
