"""users lose the unused settings column

``users.settings`` (a JSON object) was written as ``{}`` for every user and never read: the one
per-user choice, the language, has its own column.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # In place (SQLite >= 3.35): recreating ``users`` with foreign keys on would cascade-delete
    # every user's rows (see 0005).
    with op.batch_alter_table("users", recreate="never") as batch_op:
        batch_op.drop_column("settings")


def downgrade() -> None:
    with op.batch_alter_table("users", recreate="never") as batch_op:
        batch_op.add_column(sa.Column("settings", sa.JSON(), nullable=False, server_default=sa.text("'{}'")))
