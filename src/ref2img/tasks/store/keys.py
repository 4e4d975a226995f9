"""App key rows (the hashing and verifying live in `ref2img.auth`)."""

from __future__ import annotations

import time

from sqlalchemy import select, update

from ref2img.tasks.store.models import AppKeyRow
from ref2img.tasks.store.database import Database, rows_changed


class KeyStore:
    def __init__(self, db: Database):
        self._db = db

    def add(self, row: AppKeyRow) -> None:
        with self._db.session() as session:
            session.add(row)

    def get(self, app_key: str) -> AppKeyRow | None:
        with self._db.session(write=False) as session:
            return session.get(AppKeyRow, app_key)

    def list(self) -> list[AppKeyRow]:
        with self._db.session(write=False) as session:
            return list(session.scalars(select(AppKeyRow).order_by(AppKeyRow.created_at)))

    def content_filter_of(self, app_key: str) -> str | None:
        """The key's own content-filter mode (a trusted key's `off`), or None: the server's."""
        row = self.get(app_key)
        return row.content_filter if row is not None else None

    def set_limits(self, app_key: str, **limits: int | str | None) -> bool:
        """Set `max_concurrent`, `per_minute` (None: no limit) and/or `content_filter` (None: the server's
        mode); True when the key exists."""
        with self._db.session() as session:
            return (
                rows_changed(session.execute(update(AppKeyRow).where(AppKeyRow.app_key == app_key).values(**limits)))
                > 0
            )

    def revoke(self, app_key: str) -> bool:
        """True when the key existed and was live."""
        with self._db.session() as session:
            return (
                rows_changed(
                    session.execute(
                        update(AppKeyRow)
                        .where(AppKeyRow.app_key == app_key, AppKeyRow.revoked_at.is_(None))
                        .values(revoked_at=time.time())
                    )
                )
                > 0
            )
