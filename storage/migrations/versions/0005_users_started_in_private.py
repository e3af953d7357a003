"""users record when they started the bot in private

``users.started_private_at``: when the user first sent /start in a private chat with the bot, their
consent to have the photos they post in groups read and stored. Groups read only such users' photos.

Existing users who sent photos in their private chat (a reading whose chat is the user's own) had
started the bot there (Telegram opens a private chat with a bot only through /start), so they are
back-filled with their ``created_at``; users known only from groups stay NULL.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(sa.Column("started_private_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE users SET started_private_at = created_at WHERE EXISTS ("
        "SELECT 1 FROM readings WHERE readings.user_id = users.id AND readings.chat_id = users.telegram_id)"
    )


def downgrade() -> None:
    # Not a batch "move and copy" on SQLite: recreating ``users`` with foreign keys on (they cannot be
    # switched off inside the migration's transaction) would cascade-delete every user's rows.
    # SQLite >= 3.35 drops the column in place.
    with op.batch_alter_table("users", recreate="never") as batch_op:
        batch_op.drop_column("started_private_at")
