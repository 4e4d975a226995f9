"""Alembic migrations of the store, applied by `Store` on start (see `upgrade`)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection

HERE = Path(__file__).resolve().parent


def upgrade(connection: Connection) -> None:
    """Bring the schema to the newest revision on this connection (inside the caller's transaction)."""
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
