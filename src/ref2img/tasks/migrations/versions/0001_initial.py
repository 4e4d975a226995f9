"""The first schema: tasks, app keys, files, callback outbox, workers, secrets.

Revision ID: 0001
Revises:
"""

from alembic import op

from ref2img.tasks.models import Base

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# The tables as models.py drew them on the day this revision was cut; later changes get their own
# revisions with explicit operations.
TABLES = ["tasks", "app_keys", "files", "callback_outbox", "workers", "secrets"]


def upgrade() -> None:
    bind = op.get_bind()
    Base.metadata.create_all(bind, tables=[Base.metadata.tables[name] for name in TABLES], checkfirst=True)


def downgrade() -> None:
    bind = op.get_bind()
    Base.metadata.drop_all(bind, tables=[Base.metadata.tables[name] for name in TABLES])
