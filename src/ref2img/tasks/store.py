"""Task state in SQL (SQLite by default, WAL): the single source of truth, and the embedded queue.

Tasks are leased, not popped: `claim_next` moves one queued task to processing with an owner and a
lease expiry; the owner extends the lease while it works; `recover` hands expired leases back to the
queue (or ends them at 6 past their deadline). `finish` only lands for the current lease owner, and
writes the callback outbox row in the same transaction, so a task never ends without its callback.
"""

from __future__ import annotations

import fcntl
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from sqlalchemy import create_engine, event, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ref2img.protocol import TaskStatus
from ref2img.tasks.events import ChangeFeed
from ref2img.tasks.migrations import upgrade
from ref2img.tasks.models import AppKeyRow, FileRow, OutboxRow, SecretRow, SettingRow, TaskRow, WorkerRow

MAX_ATTEMPTS = 3
_MIGRATION_LOCK = threading.Lock()  # Alembic's script loading is not thread-safe  # a task whose worker died this many times ends as failed, not retried forever


class QueueFull(Exception):
    def __init__(self, depth: int, retry_after: int):
        super().__init__(f"the queue is full ({depth} tasks waiting); retry in {retry_after} s")
        self.retry_after = retry_after


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


# How long a write waits for a lock another process holds before it gives up: the API then answers
# 680005 busy (errors.py) rather than holding the client past its own timeout.
BUSY_TIMEOUT_S = 10


class Store:
    def __init__(self, url: str):
        is_sqlite = url.startswith("sqlite")
        self.is_sqlite = is_sqlite
        self.engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_S} if is_sqlite else {},
            pool_pre_ping=not is_sqlite,
            # Enough pooled connections for the server's thread pool: opening one per request
            # (SQLAlchemy's overflow) costs more than the query.
            pool_size=20 if is_sqlite else 10,
            max_overflow=20,
        )
        if is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._migrate(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = threading.Lock()  # SQLite only: PostgreSQL takes concurrent writers
        self.changes = ChangeFeed()  # any task changed: long-polls wait on it
        self.queued = ChangeFeed()  # a task became claimable: idle workers wait on it
        self.outbox = ChangeFeed()  # a callback became due: the sender waits on it

    def _migrate(self, url: str) -> None:
        """Several nodes (or stores in one process) may start at once: one migrates, the others wait
        for it and then find nothing to do. PostgreSQL: an advisory lock; SQLite: a lock file, held
        until the migration has committed."""
        with (_MIGRATION_LOCK, _sqlite_file_lock(url) if self.is_sqlite else nullcontext(),
              self.engine.begin() as connection):
            if not self.is_sqlite:
                connection.execute(text("SELECT pg_advisory_xact_lock(7274201)"))
            upgrade(connection)

    @contextmanager
    def session(self, write: bool = True) -> Iterator[Session]:
        """A transaction. SQLite allows one writer at a time and makes the others sleep and retry
        (up to 100 ms a nap), so this process's writers take turns on a lock instead."""
        with self._write_turn() if write and self.is_sqlite else nullcontext(), self._sessions.begin() as session:
            yield session

    @contextmanager
    def _write_turn(self) -> Iterator[None]:
        # Bounded like SQLite's own wait: when another process holds the database, writers queued here
        # give up after BUSY_TIMEOUT_S each rather than one after another (a request waits at most
        # twice that: its turn, then SQLite's busy timeout).
        if not self._write_lock.acquire(timeout=BUSY_TIMEOUT_S):
            raise OperationalError("waiting for a write turn", None,
                                   sqlite3.OperationalError("database is locked"))
        try:
            yield
        finally:
            self._write_lock.release()

    def close(self) -> None:
        self.engine.dispose()

    # -- creating and reading tasks ----------------------------------------------------------------
    def create_task(self, *, app_key: str, kind: str, request: dict, params: str | None, callback: str | None,
                    idempotency_key: str | None, timeout_s: float, queue_limit: int) -> tuple[TaskRow, bool]:
        """A new queued task, or the earlier one with the same idempotency key (created=False)."""
        now = time.time()
        with self.session() as session:
            if idempotency_key:
                earlier = session.scalar(select(TaskRow).where(
                    TaskRow.app_key == app_key, TaskRow.idempotency_key == idempotency_key))
                if earlier is not None:
                    return earlier, False
            depth = session.scalar(select(func.count()).select_from(TaskRow).where(
                TaskRow.status == TaskStatus.QUEUED))
            if depth >= queue_limit:
                raise QueueFull(depth, retry_after=5)
            task = TaskRow(id=new_id("t"), app_key=app_key, kind=kind, status=TaskStatus.QUEUED, progress=0,
                           reason="", request=json.dumps(request), params=params, callback=callback,
                           idempotency_key=idempotency_key, created_at=now, deadline=now + timeout_s,
                           attempts=0, cancel_requested=False)
            session.add(task)
        self.changes.notify()
        self.queued.notify()
        return task, True

    def create_task_idempotent(self, **kwargs) -> tuple[TaskRow, bool]:
        """`create_task`, tolerating two concurrent creates with one idempotency key."""
        try:
            return self.create_task(**kwargs)
        except IntegrityError:
            return self.create_task(**kwargs)

    def get_task(self, task_id: str, app_key: str | None = None) -> TaskRow | None:
        """The task, or None, also when it belongs to another key (no existence leak)."""
        with self.session(write=False) as session:
            task = session.get(TaskRow, task_id)
            if task is None or (app_key is not None and task.app_key != app_key):
                return None
            return task

    def position(self, task: TaskRow) -> int:
        """How many queued tasks are ahead of this one (-1 once it left the queue)."""
        if task.status != TaskStatus.QUEUED:
            return -1
        with self.session(write=False) as session:
            return session.scalar(select(func.count()).select_from(TaskRow).where(
                TaskRow.status == TaskStatus.QUEUED, TaskRow.created_at < task.created_at))

    def count_by_status(self) -> dict[int, int]:
        with self.session(write=False) as session:
            rows = session.execute(select(TaskRow.status, func.count()).group_by(TaskRow.status))
            return {status: count for status, count in rows}

    def recent_durations(self, limit: int = 20) -> list[float]:
        with self.session(write=False) as session:
            rows = session.execute(
                select(TaskRow.started_at, TaskRow.finished_at)
                .where(TaskRow.status == TaskStatus.SUCCEEDED, TaskRow.started_at.is_not(None))
                .order_by(TaskRow.finished_at.desc()).limit(limit))
            return [finished - started for started, finished in rows]

    # -- the queue: leases ---------------------------------------------------------------------
    def claim_next(self, owner: str, lease_s: float) -> TaskRow | None:
        now = time.time()
        with self.session() as session:
            # SKIP LOCKED: concurrent claimers on PostgreSQL take different tasks instead of queueing
            # on one row (SQLite has a single writer and ignores it).
            oldest = (select(TaskRow.id).where(TaskRow.status == TaskStatus.QUEUED)
                      .order_by(TaskRow.created_at).limit(1).with_for_update(skip_locked=True).scalar_subquery())
            task = session.scalar(
                update(TaskRow)
                .where(TaskRow.id == oldest, TaskRow.status == TaskStatus.QUEUED)
                .values(status=TaskStatus.PROCESSING, lease_owner=owner, lease_expires=now + lease_s,
                        started_at=now, attempts=TaskRow.attempts + 1, progress=0)
                .returning(TaskRow)
            )
        if task is not None:
            self.changes.notify()
        return task

    def claim(self, task_id: str, owner: str, lease_s: float) -> TaskRow | None:
        """Lease one given task (a queue message names it): queued, or processing with an expired
        lease (its worker died). None when it is running elsewhere or finished: a duplicate message."""
        now = time.time()
        with self.session() as session:
            task = session.scalar(
                update(TaskRow)
                .where(TaskRow.id == task_id,
                       or_(TaskRow.status == TaskStatus.QUEUED,
                           (TaskRow.status == TaskStatus.PROCESSING) & (TaskRow.lease_expires < now)))
                .values(status=TaskStatus.PROCESSING, lease_owner=owner, lease_expires=now + lease_s,
                        started_at=now, attempts=TaskRow.attempts + 1, progress=0)
                .returning(TaskRow))
        if task is not None:
            self.changes.notify()
        return task

    def mark_sent(self, task_ids: list[str]) -> None:
        with self.session() as session:
            session.execute(update(TaskRow).where(TaskRow.id.in_(task_ids)).values(sent_at=time.time()))

    def unsent_queued(self, older_than_s: float, limit: int = 500) -> list[str]:
        """Queued tasks with no queue message sent (requeued, or Redis was down), or whose last one
        is older than `older_than_s` (pass a huge value to skip those: their message may still wait)."""
        cutoff = time.time() - older_than_s
        with self.session(write=False) as session:
            return list(session.scalars(
                select(TaskRow.id).where(TaskRow.status == TaskStatus.QUEUED,
                                         or_(TaskRow.sent_at.is_(None), TaskRow.sent_at < cutoff))
                .order_by(TaskRow.created_at).limit(limit)))

    def extend_lease(self, task_ids: list[str], owner: str, lease_s: float) -> None:
        if not task_ids:
            return
        with self.session() as session:
            session.execute(update(TaskRow).where(TaskRow.id.in_(task_ids), TaskRow.lease_owner == owner,
                                                  TaskRow.status == TaskStatus.PROCESSING)
                            .values(lease_expires=time.time() + lease_s))

    def set_progress(self, task_id: str, owner: str, progress: int) -> None:
        with self.session() as session:
            session.execute(update(TaskRow).where(TaskRow.id == task_id, TaskRow.lease_owner == owner,
                                                  TaskRow.status == TaskStatus.PROCESSING)
                            .values(progress=progress))
        self.changes.notify()

    def should_stop(self, task_id: str, owner: str) -> TaskStatus | None:
        """CANCELLED when cancel was asked, TIMED_OUT past the deadline, else None."""
        with self.session(write=False) as session:
            row = session.execute(select(TaskRow.cancel_requested, TaskRow.deadline, TaskRow.lease_owner)
                                  .where(TaskRow.id == task_id)).one_or_none()
        if row is None or row.lease_owner != owner or row.cancel_requested:
            return TaskStatus.CANCELLED
        if time.time() > row.deadline:
            return TaskStatus.TIMED_OUT
        return None

    def finish(self, task_id: str, owner: str | None, status: TaskStatus, *, result: list[str] | None = None,
               reason: str = "", callback_payload=None) -> bool:
        """End a task (only for its lease owner; owner None: a queued task) and queue its callback.

        `callback_payload(task) -> dict` builds the callback body from the finished row, inside the
        same transaction. Returns False when someone else already ended or re-leased it."""
        now = time.time()
        with self.session() as session:
            query = select(TaskRow).where(TaskRow.id == task_id).with_for_update()
            task = session.scalar(query)
            expected = TaskStatus.QUEUED if owner is None else TaskStatus.PROCESSING
            if task is None or task.status != expected or (owner is not None and task.lease_owner != owner):
                return False
            task.status = int(status)
            task.finished_at = now
            task.reason = reason
            task.lease_owner = None
            task.lease_expires = None
            if status == TaskStatus.SUCCEEDED:
                task.progress = 100
                task.result = json.dumps(result or [])
            has_callback = bool(task.callback and callback_payload is not None)
            if has_callback:
                session.add(OutboxRow(id=f"msg_{task.id}", task_id=task.id, app_key=task.app_key, url=task.callback,
                                      payload=json.dumps(callback_payload(task)), attempts=0, next_attempt_at=now,
                                      last_error=""))
        self.changes.notify()
        if has_callback:
            self.outbox.notify()
        return True

    def request_cancel(self, task_id: str, app_key: str, callback_payload=None) -> TaskRow | None:
        """Queued: cancelled at once. Processing: flagged; the runner stops between steps."""
        task = self.get_task(task_id, app_key)
        if task is None:
            return None
        if task.status == TaskStatus.QUEUED:
            self.finish(task_id, None, TaskStatus.CANCELLED, reason="cancelled by the client",
                        callback_payload=callback_payload)
        elif task.status == TaskStatus.PROCESSING:
            with self.session() as session:
                session.execute(update(TaskRow).where(TaskRow.id == task_id).values(cancel_requested=True))
        return self.get_task(task_id, app_key)

    def recover(self, callback_payload=None, owner_alive=lambda owner: False) -> int:
        """Hand back tasks whose worker is gone; end those past their deadline or out of attempts.

        A processing task is orphaned when its lease expired or `owner_alive(owner)` says its owner
        is not running any more (an embedded server restarting knows all old owners are dead)."""
        now = time.time()
        with self.session(write=False) as session:
            rows = session.scalars(select(TaskRow).where(
                or_(TaskRow.status == TaskStatus.PROCESSING,
                    (TaskRow.status == TaskStatus.QUEUED) & (TaskRow.deadline < now)))).all()
        moved = 0
        for task in rows:
            if task.status == TaskStatus.QUEUED:
                moved += self.finish(task.id, None, TaskStatus.TIMED_OUT, reason="timed out in the queue",
                                     callback_payload=callback_payload)
                continue
            if (task.lease_expires or 0) > now and owner_alive(task.lease_owner):
                continue
            if now > task.deadline:
                moved += self.finish(task.id, task.lease_owner, TaskStatus.TIMED_OUT,
                                     reason="timed out: its worker stopped", callback_payload=callback_payload)
            elif task.attempts >= MAX_ATTEMPTS:
                moved += self.finish(task.id, task.lease_owner, TaskStatus.FAILED,
                                     reason=f"its worker stopped {task.attempts} times", callback_payload=callback_payload)
            else:
                with self.session() as session:
                    moved += session.execute(
                        update(TaskRow).where(TaskRow.id == task.id, TaskRow.lease_owner == task.lease_owner,
                                              TaskRow.status == TaskStatus.PROCESSING)
                        .values(status=TaskStatus.QUEUED, lease_owner=None, lease_expires=None, progress=0,
                                sent_at=None)
                    ).rowcount
        if moved:
            self.changes.notify()
            self.queued.notify()
        return moved

    # -- callback outbox ---------------------------------------------------------------------------
    def due_callbacks(self, limit: int = 20) -> list[OutboxRow]:
        with self.session(write=False) as session:
            return list(session.scalars(
                select(OutboxRow).where(OutboxRow.delivered_at.is_(None), OutboxRow.failed_at.is_(None),
                                        OutboxRow.next_attempt_at <= time.time())
                .order_by(OutboxRow.next_attempt_at).limit(limit)))

    def claim_callbacks(self, limit: int = 20, lease_s: float = 60.0) -> list[OutboxRow]:
        """Due callbacks, each reserved for `lease_s` so that one node at a time attempts it."""
        now = time.time()
        with self.session() as session:
            due = (select(OutboxRow.id).where(OutboxRow.delivered_at.is_(None), OutboxRow.failed_at.is_(None),
                                              OutboxRow.next_attempt_at <= now)
                   .order_by(OutboxRow.next_attempt_at).limit(limit).with_for_update(skip_locked=True))
            return list(session.scalars(update(OutboxRow).where(OutboxRow.id.in_(due))
                                        .values(next_attempt_at=now + lease_s).returning(OutboxRow)))

    def callback_delivered(self, message_id: str) -> None:
        with self.session() as session:
            session.execute(update(OutboxRow).where(OutboxRow.id == message_id)
                            .values(delivered_at=time.time(), attempts=OutboxRow.attempts + 1))

    def callback_failed(self, message_id: str, error: str, next_attempt_at: float | None) -> None:
        values = {"attempts": OutboxRow.attempts + 1, "last_error": error[:500]}
        if next_attempt_at is None:
            values["failed_at"] = time.time()
        else:
            values["next_attempt_at"] = next_attempt_at
        with self.session() as session:
            session.execute(update(OutboxRow).where(OutboxRow.id == message_id).values(**values))

    def callback(self, message_id: str) -> OutboxRow | None:
        with self.session(write=False) as session:
            return session.get(OutboxRow, message_id)

    # -- workers ---------------------------------------------------------------------------------
    def worker_heartbeat(self, worker_id: str) -> None:
        now = time.time()
        with self.session() as session:
            row = session.get(WorkerRow, worker_id)
            if row is None:
                session.add(WorkerRow(id=worker_id, heartbeat_at=now, tasks_done=0, busy_s=0.0, steps=0, step_s=0.0))
            else:
                row.heartbeat_at = now

    def worker_task_done(self, worker_id: str, busy_s: float, steps: int, step_s: float) -> None:
        with self.session() as session:
            session.execute(update(WorkerRow).where(WorkerRow.id == worker_id).values(
                tasks_done=WorkerRow.tasks_done + 1, busy_s=WorkerRow.busy_s + busy_s,
                steps=WorkerRow.steps + steps, step_s=WorkerRow.step_s + step_s, heartbeat_at=time.time()))

    def alive_workers(self, within_s: float) -> list[WorkerRow]:
        with self.session(write=False) as session:
            return list(session.scalars(select(WorkerRow).where(WorkerRow.heartbeat_at >= time.time() - within_s)
                                        .order_by(WorkerRow.id)))

    def set_setting(self, name: str, value: str) -> None:
        """Record a deployment setting (the last node to start wins: they all say the same)."""
        for _ in range(2):  # two nodes inserting at once: the loser updates instead
            try:
                with self.session() as session:
                    session.merge(SettingRow(name=name, value=value))
                return
            except IntegrityError:
                continue

    def get_setting(self, name: str) -> str | None:
        with self.session(write=False) as session:
            row = session.get(SettingRow, name)
            return row.value if row is not None else None

    def shared_secret(self, name: str) -> bytes:
        """A random secret made once for the whole deployment: the first node to ask creates it."""
        try:
            with self.session() as session:
                if session.get(SecretRow, name) is None:
                    session.add(SecretRow(name=name, value=secrets.token_bytes(32)))
        except IntegrityError:
            pass  # another node created it at the same moment
        with self.session(write=False) as session:
            return session.get(SecretRow, name).value

    # -- app keys and files ------------------------------------------------------------------------
    def add_key(self, row: AppKeyRow) -> None:
        with self.session() as session:
            session.add(row)

    def get_key(self, app_key: str) -> AppKeyRow | None:
        with self.session(write=False) as session:
            return session.get(AppKeyRow, app_key)

    def list_keys(self) -> list[AppKeyRow]:
        with self.session(write=False) as session:
            return list(session.scalars(select(AppKeyRow).order_by(AppKeyRow.created_at)))

    def revoke_key(self, app_key: str) -> bool:
        with self.session() as session:
            return session.execute(update(AppKeyRow).where(AppKeyRow.app_key == app_key,
                                                           AppKeyRow.revoked_at.is_(None))
                                   .values(revoked_at=time.time())).rowcount > 0

    def add_file(self, file_id: str, app_key: str, name: str) -> FileRow:
        row = FileRow(id=file_id, app_key=app_key, name=name, created_at=time.time())
        with self.session() as session:
            session.add(row)
        return row

    def get_file(self, file_id: str) -> FileRow | None:
        with self.session(write=False) as session:
            return session.get(FileRow, file_id)


@contextmanager
def _sqlite_file_lock(url: str) -> Iterator[None]:
    database = url.split("///", 1)[-1]
    if database in ("", ":memory:"):
        yield
        return
    with open(f"{database}.migrate-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes, fast
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
    cursor.close()
