"""Presets per task and per worker (a fleet routes a generation to the workers that hold its preset);
the marks a task's images carry; a key's own content-filter mode.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("preset", sa.String(64), nullable=True))
        batch.add_column(sa.Column("marks", sa.Text(), nullable=True))
        batch.add_column(sa.Column("watermark", sa.String(8), nullable=True))
        batch.create_index("ix_tasks_watermark", ["watermark"])
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("presets", sa.Text(), nullable=False, server_default=""))
    with op.batch_alter_table("app_keys") as batch:
        batch.add_column(sa.Column("content_filter", sa.String(8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("app_keys") as batch:
        batch.drop_column("content_filter")
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("presets")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_index("ix_tasks_watermark")
        batch.drop_column("watermark")
        batch.drop_column("marks")
        batch.drop_column("preset")
