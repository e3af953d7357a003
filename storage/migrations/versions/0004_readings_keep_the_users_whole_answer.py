"""readings keep the user's whole answer

``readings.true_text``: the digits a user replied with when their count differs from the digits
read (two touching digits read as one, a stray mark read as a digit). They cannot be matched to
the crops, so no per-digit label is made from them; the reading keeps them whole.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("readings") as batch_op:
        batch_op.add_column(sa.Column("true_text", sa.String(length=32), nullable=True))


def downgrade() -> None:
    # Dropped in place: rebuilding the table (batch mode's default on SQLite) would cascade-delete
    # the readings' samples and labels.
    with op.batch_alter_table("readings", recreate="never") as batch_op:
        batch_op.drop_column("true_text")
