"""Uploaded files (`POST /v1/files`) and the deployment's signing secrets."""

from __future__ import annotations

import secrets
import time

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
