"""Per-key quotas: at most N tasks queued or running, at most N tasks created a minute.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("app_keys") as batch:
        batch.add_column(sa.Column("max_concurrent", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("per_minute", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("app_keys") as batch:
        batch.drop_column("per_minute")
        batch.drop_column("max_concurrent")
