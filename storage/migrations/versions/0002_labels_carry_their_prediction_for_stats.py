"""labels carry their prediction for stats

A user's stats then read one covering index of current labels instead of joining 10,000 labels
to their predictions. The copied columns never change: a prediction is written once.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CURRENT = sa.text("superseded_at IS NULL")
COPIED = (
    ("answer", sa.SmallInteger(), "digit"),
    ("base_answer", sa.SmallInteger(), "base_digit"),
    ("personal", sa.Boolean(), "source = 'personal'"),
    ("recorded_at", sa.DateTime(timezone=True), "created_at"),
)


def upgrade() -> None:
    with op.batch_alter_table("labels") as batch_op:
        for name, type_, _ in COPIED:
            batch_op.add_column(sa.Column(name, type_, nullable=True))
    for name, _, expression in COPIED:
        op.execute(
            f"UPDATE labels SET {name} = (SELECT {expression} FROM predictions "
            "WHERE predictions.sample_id = labels.sample_id)"
        )
    with op.batch_alter_table("labels") as batch_op:
        for name, type_, _ in COPIED:
            batch_op.alter_column(name, existing_type=type_, nullable=False)
        batch_op.drop_index("ix_labels_current_user", sqlite_where=CURRENT, postgresql_where=CURRENT)
        batch_op.create_index(
            "ix_labels_current_user_stats",
            ["user_id", "sample_id", "digit", "answer", "base_answer", "personal", "recorded_at"],
            unique=False, sqlite_where=CURRENT, postgresql_where=CURRENT,
        )


def downgrade() -> None:
    with op.batch_alter_table("labels") as batch_op:
        batch_op.drop_index("ix_labels_current_user_stats", sqlite_where=CURRENT, postgresql_where=CURRENT)
        batch_op.create_index("ix_labels_current_user", ["user_id", "sample_id"], unique=False,
                              sqlite_where=CURRENT, postgresql_where=CURRENT)
        for name, _, _ in reversed(COPIED):
            batch_op.drop_column(name)
