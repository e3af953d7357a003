"""inbox rows are leased

``update_inbox.claimed_at``: when a replica took a pending update, renewed by its heartbeat while it
handles it. A pending update whose lease expired (its replica was killed or replaced, under another
host name) is taken over by any other replica, instead of waiting for its owner's name to come back.

Pending rows are back-filled with their ``received_at`` (their lease long expired: a replica taking
over after the upgrade replays them); finished rows stay NULL.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("update_inbox") as batch_op:
        batch_op.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_update_inbox_state_claimed_at"), ["state", "claimed_at"],
                              unique=False)
    op.execute("UPDATE update_inbox SET claimed_at = received_at WHERE state = 'pending'")


def downgrade() -> None:
    # In place on SQLite (>= 3.35), as 0005 does: no table rebuild.
    with op.batch_alter_table("update_inbox", recreate="never") as batch_op:
        batch_op.drop_index(batch_op.f("ix_update_inbox_state_claimed_at"))
        batch_op.drop_column("claimed_at")
