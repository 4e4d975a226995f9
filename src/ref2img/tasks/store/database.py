"""The one database every part of the store shares: its engine, session factory and migrations.

The database's own exceptions end here: a part's caller sees `StoreBusy` (locked by another process,
unreachable, disk full: try again later) or `StoreConflict` (a unique row already exists), never
SQLAlchemy's or the driver's.
"""

from __future__ import annotations

import fcntl
import secrets
import threading
from pathlib import Path
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, cast

from sqlalchemy import CursorResult, Result, create_engine, event, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ref2img.tasks.private_files import private_file, sqlite_path
from ref2img.tasks.store.migrations import upgrade
from ref2img.lifecycle import LedgerError

# How long a write waits for a lock another process holds before it gives up: the API then answers
# 680005 busy rather than holding the client past its own timeout.
BUSY_TIMEOUT_S = 10

_MIGRATION_LOCK = threading.Lock()  # Alembic's script loading is not thread-safe


class StoreError(LedgerError):
    """The store could not do what was asked; the message is fit for a user (no URL, no SQL)."""


class StoreBusy(StoreError):
    """Locked by another process, unreachable or out of disk: nothing was changed; retry later."""


class StoreConflict(StoreError):
    """A row with the same unique key already exists (two nodes created it at once)."""


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def rows_changed(result: Result[Any]) -> int:
    """How many rows an UPDATE touched (an UPDATE's result is a cursor result)."""
    return cast(CursorResult[Any], result).rowcount


class Database:
    def __init__(self, url: str):
        self.is_sqlite = url.startswith("sqlite")
        _private_sqlite_files(url)
        self.engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_S} if self.is_sqlite else {},
            pool_pre_ping=not self.is_sqlite,
            # Enough pooled connections for the server's thread pool: opening one per request
            # (SQLAlchemy's overflow) costs more than the query.
            pool_size=20 if self.is_sqlite else 10,
            max_overflow=20,
        )
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        with _translated_errors():
            self._migrate(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = threading.Lock()  # SQLite only: PostgreSQL takes concurrent writers

    def _migrate(self, url: str) -> None:
        """Several nodes (or stores in one process) may start at once: one migrates, the others wait
        for it and then find nothing to do. PostgreSQL: an advisory lock; SQLite: a lock file, held
        until the migration has committed."""
        with (
            _MIGRATION_LOCK,
            _sqlite_file_lock(url) if self.is_sqlite else nullcontext(),
            self.engine.begin() as connection,
        ):
            if not self.is_sqlite:
                connection.execute(text("SELECT pg_advisory_xact_lock(7274201)"))
            upgrade(connection)

    @contextmanager
    def session(self, write: bool = True) -> Iterator[Session]:
        """A transaction. SQLite allows one writer at a time and makes the others sleep and retry
        (up to 100 ms a nap), so this process's writers take turns on a lock instead."""
        with (
            _translated_errors(),
            self._write_turn() if write and self.is_sqlite else nullcontext(),
            self._sessions.begin() as session,
        ):
            yield session

    @contextmanager
    def _write_turn(self) -> Iterator[None]:
        # Bounded like SQLite's own wait: when another process holds the database, writers queued here
        # give up after BUSY_TIMEOUT_S each rather than one after another (a request waits at most
        # twice that: its turn, then SQLite's busy timeout).
        if not self._write_lock.acquire(timeout=BUSY_TIMEOUT_S):
            raise StoreBusy("the task store is locked by another process")
        try:
            yield
        finally:
            self._write_lock.release()

    def close(self) -> None:
        self.engine.dispose()


@contextmanager
def _translated_errors() -> Iterator[None]:
    try:
        yield
    except OperationalError as exc:
        raise StoreBusy(_trouble(exc)) from exc
    except IntegrityError as exc:
        raise StoreConflict("a row with this key already exists") from exc


def _trouble(exc: OperationalError) -> str:
    """What went wrong, in a user's words; never the database's URL or its own text."""
    detail = str(exc.orig).lower()
    if "locked" in detail or "busy" in detail:
        return "the task store is locked by another process"
    if "full" in detail or "no space" in detail:
        return "the server's disk is full"
    return "the task store is unreachable"


@contextmanager
def _sqlite_file_lock(url: str) -> Iterator[None]:
    database = url.split("///", 1)[-1]
    if database in ("", ":memory:"):
        yield
        return
    with open(private_file(Path(f"{database}.migrate-lock")), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes, fast
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
    cursor.close()


def _private_sqlite_files(url: str) -> None:
    """The database file is created 600 before SQLite opens it (its -wal and -shm files take the
    database's mode); files an older version left wider are narrowed."""
    database = sqlite_path(url)
    if database is None:
        return
    private_file(database)
    for companion in (Path(f"{database}-wal"), Path(f"{database}-shm")):
        if companion.exists():
            private_file(companion)
