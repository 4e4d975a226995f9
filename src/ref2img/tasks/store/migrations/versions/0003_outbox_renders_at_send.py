"""Callbacks are rendered when first sent: an outbox row holds its task id, and `payload` stays empty
until the first attempt. Workers no longer need the public URL, so the settings table that carried it
goes.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("callback_outbox") as batch:  # batch: SQLite rebuilds the table
        batch.alter_column("payload", existing_type=sa.Text(), nullable=True)
    op.drop_table("settings")


def downgrade() -> None:
    op.create_table(
        "settings", sa.Column("name", sa.String(64), primary_key=True), sa.Column("value", sa.Text(), nullable=False)
    )
    op.execute("UPDATE callback_outbox SET payload = '' WHERE payload IS NULL")
    with op.batch_alter_table("callback_outbox") as batch:
        batch.alter_column("payload", existing_type=sa.Text(), nullable=False)
