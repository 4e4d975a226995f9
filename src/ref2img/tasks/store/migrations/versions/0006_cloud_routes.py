"""Cloud routing: where a task runs (local GPUs or the Tomoviee cloud), the cloud task it follows,
the cloud's last wait estimate, and how often it fell back from the cloud to the local queue.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("route", sa.String(16), nullable=False, server_default="local"))
        batch.add_column(sa.Column("remote_id", sa.String(128), nullable=True))
        batch.add_column(sa.Column("remote_wait_s", sa.Float(), nullable=True))
        batch.add_column(sa.Column("fallbacks", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("fallbacks")
        batch.drop_column("remote_wait_s")
        batch.drop_column("remote_id")
        batch.drop_column("route")
