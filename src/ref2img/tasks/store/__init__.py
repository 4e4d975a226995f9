"""The store, split by concern over one database (SQLite by default, WAL; PostgreSQL to scale out).

    store = Store(url)
    store.tasks     tasks and their leases (the embedded queue)     tasks.py
    store.outbox    callbacks due, delivered in the background      outbox.py
    store.keys      app keys                                        keys.py
    store.files     uploads and the deployment's signing secrets    files.py
    store.fleet     worker heartbeats and totals                    fleet.py
    store.studio    the studio's sign-in links and sessions         studio.py

The parts share one engine and session factory (`database.py`), and raise only the store's own
exceptions: `StoreBusy`, `StoreConflict`.
"""

from __future__ import annotations

from ref2img.tasks.store.database import BUSY_TIMEOUT_S, Database, StoreBusy, StoreConflict, StoreError, new_id
from ref2img.tasks.store.files import FileStore
from ref2img.tasks.store.fleet import Fleet
from ref2img.tasks.store.keys import KeyStore
from ref2img.tasks.store.outbox import Outbox
from ref2img.tasks.store.studio import StudioStore
from ref2img.tasks.store.tasks import MAX_ATTEMPTS, IdempotencyMismatch, QueueFull, Quota, QuotaExceeded, TaskStore

__all__ = [
    "BUSY_TIMEOUT_S",
    "MAX_ATTEMPTS",
    "IdempotencyMismatch",
    "QueueFull",
    "Quota",
    "QuotaExceeded",
    "Store",
    "StoreBusy",
    "StoreConflict",
    "StoreError",
    "new_id",
]


class Store:
    def __init__(self, url: str):
        self.db = Database(url)
        self.outbox = Outbox(self.db)
        self.tasks = TaskStore(self.db, self.outbox)
        self.keys = KeyStore(self.db)
        self.files = FileStore(self.db)
        self.fleet = Fleet(self.db)
        self.studio = StudioStore(self.db)

    @property
    def is_sqlite(self) -> bool:
        return self.db.is_sqlite

    def close(self) -> None:
        self.db.close()
