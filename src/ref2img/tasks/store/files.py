"""Uploaded files (`POST /v1/files`) and the deployment's signing secrets."""

from __future__ import annotations

import secrets
import time

from sqlalchemy import delete, func, select

from ref2img.tasks.store.models import FileRow, SecretRow
from ref2img.tasks.store.database import Database, StoreBusy, StoreConflict


class FileStore:
    def __init__(self, db: Database):
        self._db = db

    def add(self, file_id: str, app_key: str, name: str) -> FileRow:
        row = FileRow(id=file_id, app_key=app_key, name=name, created_at=time.time())
        with self._db.session() as session:
            session.add(row)
        return row

    def uploaded_before(self, cutoff: float, limit: int = 500) -> list[FileRow]:
        """Uploads older than `cutoff` (a time), oldest first."""
        with self._db.session(write=False) as session:
            return list(
                session.scalars(
                    select(FileRow).where(FileRow.created_at < cutoff).order_by(FileRow.created_at).limit(limit)
                )
            )

    def uploaded_since(self, app_key: str, since: float) -> int:
        """How many files this key uploaded after `since` (a time)."""
        with self._db.session(write=False) as session:
            query = (
                select(func.count()).select_from(FileRow).where(FileRow.app_key == app_key, FileRow.created_at > since)
            )
            return session.scalar(query) or 0

    def delete(self, file_ids: list[str]) -> None:
        if file_ids:
            with self._db.session() as session:
                session.execute(delete(FileRow).where(FileRow.id.in_(file_ids)))

    def get(self, file_id: str) -> FileRow | None:
        with self._db.session(write=False) as session:
            return session.get(FileRow, file_id)

    def shared_secret(self, name: str) -> bytes:
        """A random secret made once for the whole deployment (file URL signing): the first node to
        ask creates it, every other node reads the same one."""
        try:
            with self._db.session() as session:
                if session.get(SecretRow, name) is None:
                    session.add(SecretRow(name=name, value=secrets.token_bytes(32)))
        except StoreConflict:
            pass  # another node created it at the same moment
        with self._db.session(write=False) as session:
            row = session.get(SecretRow, name)
        if row is None:  # created above, and secrets are never deleted
            raise StoreBusy(f"the {name} secret could not be created")
        return row.value
