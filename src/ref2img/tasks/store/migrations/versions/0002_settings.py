"""Deployment settings: facts one kind of node records and the others read (the API nodes' public URL).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "settings", sa.Column("name", sa.String(64), primary_key=True), sa.Column("value", sa.Text(), nullable=False)
    )


def downgrade() -> None:
    op.drop_table("settings")
