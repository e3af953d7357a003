"""update inbox

Telegram updates are written down before they are acknowledged (getUpdates' next offset, or the
webhook's 200) and marked done once handled, so a bot killed mid-update replays it at start-up.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "update_inbox",
        sa.Column("update_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("reading_id", sa.BigInteger(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("state IN ('pending', 'done', 'failed')", name=op.f("ck_update_inbox_state_known")),
        sa.PrimaryKeyConstraint("update_id", name=op.f("pk_update_inbox")),
    )
    with op.batch_alter_table("update_inbox") as batch_op:
        batch_op.create_index(batch_op.f("ix_update_inbox_state_owner_update_id"),
                              ["state", "owner", "update_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_update_inbox_finished_at"), ["finished_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("update_inbox") as batch_op:
        batch_op.drop_index(batch_op.f("ix_update_inbox_finished_at"))
        batch_op.drop_index(batch_op.f("ix_update_inbox_state_owner_update_id"))
    op.drop_table("update_inbox")
