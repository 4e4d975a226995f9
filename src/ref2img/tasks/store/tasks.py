"""Tasks and their leases: the single source of truth, and the embedded queue.

Tasks are leased, not popped: `claim_next` (or `claim`, for a queue message naming a task) moves a
queued task to processing with an owner and a lease expiry; the owner extends the lease while it
works; `recover` hands expired leases back to the queue (or ends them at 6 past their deadline).
`finish` only lands for the current lease owner, and queues the callback in the same transaction,
so a task never ends without its callback.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, or_, select, text, update
from sqlalchemy.orm import Session

from ref2img.lifecycle import CLOUD, LOCAL
from ref2img.protocol import TaskStatus
from ref2img.tasks.store.events import ChangeFeed
from ref2img.tasks.store.models import OutboxRow, TaskRow
from ref2img.tasks.store.database import Database, StoreConflict, new_id, rows_changed
from ref2img.tasks.store.outbox import Outbox

MAX_ATTEMPTS = 3  # a task whose worker died this many times ends as failed, not retried forever
# PostgreSQL: creates take this transaction-level advisory lock, so that "count, then insert" is one
# step for the queue limit and the quotas (READ COMMITTED alone let 20 parallel creates through a
# limit of 1 two to five times). SQLite's single writer already serialises them.
CREATE_LOCK = 7274202


class QueueFull(Exception):
    def __init__(self, depth: int, retry_after: int):
        super().__init__(f"the queue is full ({depth} tasks waiting); retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class Quota:
    """A key's limits (None: none). Checked in the transaction that creates the task."""

    max_concurrent: int | None = None
    per_minute: int | None = None


class IdempotencyMismatch(Exception):
    """The idempotency key was used before with another body: a second, different request."""


class QuotaExceeded(Exception):
    def __init__(self, message: str, retry_after: int):
        super().__init__(f"{message}; retry in {retry_after} s")
        self.retry_after = retry_after


class TaskStore:
    def __init__(self, db: Database, outbox: Outbox):
        self._db = db
        self._outbox = outbox
        self.changes = ChangeFeed()  # any task changed: long-polls wait on it
        self.queued = ChangeFeed()  # a task became claimable: idle workers wait on it

    # -- creating and reading tasks ----------------------------------------------------------------
    def create(
        self,
        *,
        app_key: str,
        kind: str,
        request: dict,
        params: str | None,
        callback: str | None,
        idempotency_key: str | None,
        timeout_s: float,
        queue_limit: int,
        key_queue_limit: int | None = None,
        quota: Quota | None = None,
        route: str = LOCAL,
        preset: str | None = None,
    ) -> tuple[TaskRow, bool]:
        """A new queued task, or the earlier one with the same idempotency key and body (created=False;
        IdempotencyMismatch for the same key with another body). QueueFull when the queue is full;
        QuotaExceeded when the key is at one of its limits, or holds `key_queue_limit` of the queued
        tasks (its share of the queue: one key never fills it for the others). `route`: whose workers run it, the local
        GPUs' (LOCAL) or the cloud followers' (CLOUD); `preset`: a generation's, whose workers alone run it."""
        now = time.time()
        body = json.dumps(request)
        with self._db.session() as session:
            if not self._db.is_sqlite:
                session.execute(text("SELECT pg_advisory_xact_lock(:lock)"), {"lock": CREATE_LOCK})
            if idempotency_key:
                earlier = session.scalar(
                    select(TaskRow).where(TaskRow.app_key == app_key, TaskRow.idempotency_key == idempotency_key)
                )
                if earlier is not None:
                    if (earlier.kind, earlier.request, earlier.params, earlier.callback) != (
                        kind,
                        body,
                        params,
                        callback,
                    ):
                        raise IdempotencyMismatch(idempotency_key)
                    return earlier, False
            _admit(session, app_key, queue_limit, key_queue_limit, quota, now)
            task = TaskRow(
                id=new_id("t"),
                app_key=app_key,
                kind=kind,
                status=TaskStatus.QUEUED,
                progress=0,
                reason="",
                request=body,
                params=params,
                callback=callback,
                idempotency_key=idempotency_key,
                created_at=now,
                deadline=now + timeout_s,
                attempts=0,
                cancel_requested=False,
                route=route,
                fallbacks=0,
                preset=preset,
            )
            session.add(task)
        self.changes.notify()
        self.queued.notify()
        return task, True

    def by_idempotency_key(self, app_key: str, idempotency_key: str) -> TaskRow | None:
        with self._db.session(write=False) as session:
            return session.scalar(
                select(TaskRow).where(TaskRow.app_key == app_key, TaskRow.idempotency_key == idempotency_key)
            )

    def check_admission(
        self, app_key: str, queue_limit: int, key_queue_limit: int | None = None, quota: Quota | None = None
    ) -> None:
        """What `create` would refuse now (QueueFull, QuotaExceeded), asked before a route stores anything
        for the task (its uploads); `create` asks again, in its own transaction."""
        with self._db.session(write=False) as session:
            _admit(session, app_key, queue_limit, key_queue_limit, quota, time.time())

    def create_idempotent(self, **kwargs) -> tuple[TaskRow, bool]:
        """`create`, tolerating two concurrent creates with one idempotency key."""
        try:
            return self.create(**kwargs)
        except StoreConflict:
            return self.create(**kwargs)

    def ended_before(self, cutoff: float, limit: int = 500) -> list[str]:
        """Ids of tasks that ended before `cutoff` (a time), oldest first, whose callbacks are all done
        (delivered or given up): what the retention period lets go."""
        pending = select(OutboxRow.task_id).where(OutboxRow.delivered_at.is_(None), OutboxRow.failed_at.is_(None))
        ended = func.coalesce(TaskRow.finished_at, TaskRow.created_at)
        with self._db.session(write=False) as session:
            return list(
                session.scalars(
                    select(TaskRow.id)
                    .where(TaskRow.status >= TaskStatus.SUCCEEDED, ended < cutoff, TaskRow.id.not_in(pending))
                    .order_by(ended)
                    .limit(limit)
                )
            )

    def delete(self, task_ids: list[str]) -> int:
        """Forget these tasks, with their callbacks' records; their files are the caller's to delete first."""
        if not task_ids:
            return 0
        with self._db.session() as session:
            session.execute(delete(OutboxRow).where(OutboxRow.task_id.in_(task_ids)))
            return rows_changed(session.execute(delete(TaskRow).where(TaskRow.id.in_(task_ids))))

    def get(self, task_id: str, app_key: str | None = None) -> TaskRow | None:
        """The task, or None, also when it belongs to another key (no existence leak)."""
        with self._db.session(write=False) as session:
            task = session.get(TaskRow, task_id)
            if task is None or (app_key is not None and task.app_key != app_key):
                return None
            return task

    def position(self, task: TaskRow) -> int:
        """How many queued tasks of its route (and its preset, when it names one) are ahead of this one
        (-1 once it left the queue)."""
        if task.status != TaskStatus.QUEUED:
            return -1
        same_preset = () if task.preset is None else (TaskRow.preset == task.preset,)
        with self._db.session(write=False) as session:
            return (
                session.scalar(
                    select(func.count())
                    .select_from(TaskRow)
                    .where(
                        TaskRow.status == TaskStatus.QUEUED,
                        TaskRow.route == task.route,
                        TaskRow.created_at < task.created_at,
                        *same_preset,
                    )
                )
                or 0
            )

    def active_count(self, route: str, preset: str | None = None) -> tuple[int, int]:
        """(queued, running) tasks of a route (of one preset, when given)."""
        same_preset = () if preset is None else (TaskRow.preset == preset,)
        with self._db.session(write=False) as session:
            rows = session.execute(
                select(TaskRow.status, func.count())
                .where(
                    TaskRow.route == route,
                    TaskRow.status.in_((TaskStatus.QUEUED, TaskStatus.PROCESSING)),
                    *same_preset,
                )
                .group_by(TaskRow.status)
            )
            counts = {status: count for status, count in rows}
        return counts.get(TaskStatus.QUEUED, 0), counts.get(TaskStatus.PROCESSING, 0)

    def route_counts(self) -> tuple[dict[str, int], int]:
        """Tasks by route (every status), and how many moved from the cloud back to the local queue."""
        with self._db.session(write=False) as session:
            by_route = {
                route: count
                for route, count in session.execute(select(TaskRow.route, func.count()).group_by(TaskRow.route))
            }
            fallbacks = session.scalar(select(func.coalesce(func.sum(TaskRow.fallbacks), 0))) or 0
        return by_route, int(fallbacks)

    def count_by_status(self) -> dict[int, int]:
        with self._db.session(write=False) as session:
            rows = session.execute(select(TaskRow.status, func.count()).group_by(TaskRow.status))
            return {status: count for status, count in rows}

    def recent_durations(self, limit: int = 20) -> list[float]:
        with self._db.session(write=False) as session:
            rows = session.execute(
                select(TaskRow.started_at, TaskRow.finished_at)
                .where(TaskRow.status == TaskStatus.SUCCEEDED, TaskRow.started_at.is_not(None))
                .order_by(TaskRow.finished_at.desc())
                .limit(limit)
            )
            return [finished - started for started, finished in rows if started is not None and finished is not None]

    # -- the queue: leases ---------------------------------------------------------------------
    def claim_next(
        self, owner: str, lease_s: float, route: str = LOCAL, presets: tuple[str, ...] | None = None
    ) -> TaskRow | None:
        """Lease the oldest queued task of `route` (the embedded queue), or None when none waits. With
        `presets`, a task naming a preset is taken only when it is one of them."""
        # SKIP LOCKED: concurrent claimers on PostgreSQL take different tasks instead of queueing
        # on one row (SQLite has a single writer and ignores it).
        held = () if presets is None else (or_(TaskRow.preset.is_(None), TaskRow.preset.in_(presets)),)
        oldest = (
            select(TaskRow.id)
            .where(TaskRow.status == TaskStatus.QUEUED, TaskRow.route == route, *held)
            .order_by(TaskRow.created_at)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        return self._lease(owner, lease_s, lambda now: (TaskRow.id == oldest, TaskRow.status == TaskStatus.QUEUED))

    def claim(self, task_id: str, owner: str, lease_s: float) -> TaskRow | None:
        """Lease one given task (a queue message names it): queued, or processing with an expired
        lease (its worker died). None when it is running elsewhere or finished: a duplicate message."""
        return self._lease(
            owner,
            lease_s,
            lambda now: (
                TaskRow.id == task_id,
                or_(
                    TaskRow.status == TaskStatus.QUEUED,
                    (TaskRow.status == TaskStatus.PROCESSING) & (TaskRow.lease_expires < now),
                ),
            ),
        )

    def _lease(self, owner: str, lease_s: float, which: Callable[[float], tuple[Any, ...]]) -> TaskRow | None:
        """Move the task that `which(now)` selects to processing under `owner`'s lease, in one UPDATE."""
        now = time.time()
        with self._db.session() as session:
            task = session.scalar(
                update(TaskRow)
                .where(*which(now))
                .values(
                    status=TaskStatus.PROCESSING,
                    lease_owner=owner,
                    lease_expires=now + lease_s,
                    started_at=now,
                    attempts=TaskRow.attempts + 1,
                    progress=0,
                    preview=None,
                )
                .returning(TaskRow)
            )
        if task is not None:
            self.changes.notify()
        return task

    def mark_sent(self, task_ids: list[str]) -> None:
        with self._db.session() as session:
            session.execute(update(TaskRow).where(TaskRow.id.in_(task_ids)).values(sent_at=time.time()))

    def find_by_mark(self, mark: str) -> list[TaskRow]:
        """The tasks whose images carry the watermark id `mark` (one in practice: ids are random)."""
        with self._db.session(write=False) as session:
            return list(session.scalars(select(TaskRow).where(TaskRow.watermark == mark).limit(10)))

    def unsent_queued(self, older_than_s: float, limit: int = 500) -> list[tuple[str, str, str | None]]:
        """(task id, route, preset) of queued tasks with no queue message sent (requeued, fallen back from the
        cloud, or Redis was down), or whose last one is older than `older_than_s` (pass a huge value to
        skip those: their message may still wait)."""
        cutoff = time.time() - older_than_s
        with self._db.session(write=False) as session:
            rows = session.execute(
                select(TaskRow.id, TaskRow.route, TaskRow.preset)
                .where(TaskRow.status == TaskStatus.QUEUED, or_(TaskRow.sent_at.is_(None), TaskRow.sent_at < cutoff))
                .order_by(TaskRow.created_at)
                .limit(limit)
            )
            return [(task_id, route, preset) for task_id, route, preset in rows]

    def extend_lease(self, task_ids: list[str], owner: str, lease_s: float) -> None:
        if not task_ids:
            return
        with self._db.session() as session:
            session.execute(
                update(TaskRow)
                .where(TaskRow.id.in_(task_ids), TaskRow.lease_owner == owner, TaskRow.status == TaskStatus.PROCESSING)
                .values(lease_expires=time.time() + lease_s)
            )

    def set_preview(self, task_id: str, owner: str, name: str) -> None:
        """The running task's latest step preview (a stored file name); the query shows it at status 2."""
        self._update_running(task_id, owner, preview=name)

    def each_for_key(self, app_key: str, offset: int, limit: int) -> Iterator[TaskRow]:
        """One page of a key's tasks, newest first, read a few rows at a time: a caller that stops early
        (a page bounded in bytes) never holds the rest, which can carry megabytes of data: URIs each."""
        with self._db.session(write=False) as session:
            rows = session.scalars(
                select(TaskRow)
                .where(TaskRow.app_key == app_key)
                .order_by(TaskRow.created_at.desc(), TaskRow.id)
                .offset(offset)
                .limit(limit)
                .execution_options(yield_per=4)
            )
            for row in rows:
                yield row
                session.expunge(row)  # let it go once the caller has it

    def count_for_key(self, app_key: str) -> int:
        with self._db.session(write=False) as session:
            return session.scalar(select(func.count()).select_from(TaskRow).where(TaskRow.app_key == app_key)) or 0

    def set_progress(self, task_id: str, owner: str, progress: int) -> None:
        self._update_running(task_id, owner, progress=progress)

    # -- cloud-routed tasks ----------------------------------------------------------------------
    def remember_remote(self, task_id: str, owner: str, remote_id: str) -> None:
        """The cloud task this one follows, kept before anything else happens: a restarted worker
        follows it instead of creating a second one."""
        self._update_running(task_id, owner, remote_id=remote_id)

    def set_remote_wait(self, task_id: str, owner: str, seconds: float) -> None:
        self._update_running(task_id, owner, remote_wait_s=seconds)

    def fall_back(self, task_id: str, owner: str) -> bool:
        """Move a cloud-routed task that the cloud never accepted back to the local queue, as queued
        with no message sent (the caller sends one; the housekeeping resends it if that is lost).
        Only for the lease owner, so it happens once; False when the task is no longer ours."""
        with self._db.session() as session:
            moved = rows_changed(
                session.execute(
                    update(TaskRow)
                    .where(
                        TaskRow.id == task_id,
                        TaskRow.lease_owner == owner,
                        TaskRow.status == TaskStatus.PROCESSING,
                        TaskRow.route == CLOUD,
                    )
                    .values(
                        status=TaskStatus.QUEUED,
                        route=LOCAL,
                        lease_owner=None,
                        lease_expires=None,
                        progress=0,
                        remote_id=None,
                        remote_wait_s=None,
                        sent_at=None,
                        fallbacks=TaskRow.fallbacks + 1,
                    )
                )
            )
        if moved:
            self.changes.notify()
            self.queued.notify()
        return bool(moved)

    def release(self, task_id: str, owner: str) -> bool:
        """Give a running task back to the queue, as its worker stops (no attempt counted: it did not fail);
        it runs again from its first step, on the next worker or after a restart. Only for its lease owner."""
        with self._db.session() as session:
            moved = rows_changed(
                session.execute(
                    update(TaskRow)
                    .where(TaskRow.id == task_id, TaskRow.lease_owner == owner, TaskRow.status == TaskStatus.PROCESSING)
                    .values(
                        status=TaskStatus.QUEUED,
                        lease_owner=None,
                        lease_expires=None,
                        progress=0,
                        preview=None,
                        sent_at=None,
                        attempts=TaskRow.attempts - 1,
                    )
                )
            )
        if moved:
            self.changes.notify()
            self.queued.notify()
        return bool(moved)

    def _update_running(self, task_id: str, owner: str, **values: Any) -> None:
        """Change a running task, only while `owner` holds its lease (a late worker changes nothing)."""
        with self._db.session() as session:
            session.execute(
                update(TaskRow)
                .where(TaskRow.id == task_id, TaskRow.lease_owner == owner, TaskRow.status == TaskStatus.PROCESSING)
                .values(**values)
            )
        self.changes.notify()

    def should_stop(self, task_id: str, owner: str) -> TaskStatus | None:
        """CANCELLED when cancel was asked, TIMED_OUT past the deadline, else None."""
        with self._db.session(write=False) as session:
            row = session.execute(
                select(TaskRow.cancel_requested, TaskRow.deadline, TaskRow.lease_owner).where(TaskRow.id == task_id)
            ).one_or_none()
        if row is None or row.lease_owner != owner or row.cancel_requested:
            return TaskStatus.CANCELLED
        if time.time() > row.deadline:
            return TaskStatus.TIMED_OUT
        return None

    def finish(
        self,
        task_id: str,
        owner: str | None,
        status: TaskStatus,
        *,
        result: list[str] | None = None,
        reason: str = "",
        marks: dict[str, Any] | None = None,
    ) -> bool:
        """End a task (only for its lease owner; owner None: a queued task) and queue its callback.
        Returns False when someone else already ended or re-leased it. `marks`: what its images carry."""
        now = time.time()
        with self._db.session() as session:
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
                task.marks = json.dumps(marks) if marks else None
                task.watermark = (marks or {}).get("watermark")
            if task.callback:
                self._outbox.add(session, task, now)
        self.changes.notify()
        if task.callback:
            self._outbox.due_feed.notify()
        return True

    def request_cancel(self, task_id: str, app_key: str) -> TaskRow | None:
        """Queued: cancelled at once. Processing: flagged; the runner stops between steps. A task in the
        cloud holds no GPU here, so it ends at once too: its follower sees the lease gone and stops
        polling, abandoning the cloud task (the cloud API has no cancel)."""
        task = self.get(task_id, app_key)
        if task is None:
            return None
        if task.status in (TaskStatus.QUEUED, TaskStatus.PROCESSING):
            # The flag first: a worker that claims the task after this read still sees it and stops
            # (a queued task claimed between the read and `finish` lost its cancel before).
            with self._db.session() as session:
                session.execute(update(TaskRow).where(TaskRow.id == task_id).values(cancel_requested=True))
            if not (
                task.status == TaskStatus.QUEUED
                and self.finish(task_id, None, TaskStatus.CANCELLED, reason="cancelled by the client")
            ):
                task = self.get(task_id, app_key)
                if task is not None and task.status == TaskStatus.PROCESSING and task.route == CLOUD:
                    self.finish(task_id, task.lease_owner, TaskStatus.CANCELLED, reason="cancelled by the client")
        return self.get(task_id, app_key)

    def recover(self, owner_alive: Callable[[str | None], bool] = lambda owner: False) -> int:
        """Hand back tasks whose worker is gone; end those past their deadline or out of attempts.

        A processing task is orphaned when its lease expired or `owner_alive(owner)` says its owner
        is not running any more (an embedded server restarting knows all old owners are dead)."""
        now = time.time()
        with self._db.session(write=False) as session:
            rows = session.scalars(
                select(TaskRow).where(
                    or_(
                        TaskRow.status == TaskStatus.PROCESSING,
                        (TaskRow.status == TaskStatus.QUEUED) & (TaskRow.deadline < now),
                    )
                )
            ).all()
        moved = 0
        for task in rows:
            if task.status == TaskStatus.QUEUED:
                moved += self.finish(task.id, None, TaskStatus.TIMED_OUT, reason="timed out in the queue")
                continue
            if (task.lease_expires or 0) > now and owner_alive(task.lease_owner):
                continue
            if now > task.deadline:
                moved += self.finish(
                    task.id, task.lease_owner, TaskStatus.TIMED_OUT, reason="timed out: its worker stopped"
                )
            elif task.attempts >= MAX_ATTEMPTS:
                moved += self.finish(
                    task.id, task.lease_owner, TaskStatus.FAILED, reason=f"its worker stopped {task.attempts} times"
                )
            else:
                with self._db.session() as session:
                    moved += rows_changed(
                        session.execute(
                            update(TaskRow)
                            .where(
                                TaskRow.id == task.id,
                                TaskRow.lease_owner == task.lease_owner,
                                TaskRow.status == TaskStatus.PROCESSING,
                            )
                            .values(
                                status=TaskStatus.QUEUED, lease_owner=None, lease_expires=None, progress=0, sent_at=None
                            )
                        )
                    )
        if moved:
            self.changes.notify()
            self.queued.notify()
        return moved


def _admit(
    session: Session, app_key: str, queue_limit: int, key_queue_limit: int | None, quota: Quota | None, now: float
) -> None:
    """Refuse a new task of this key: its share of the queue, the queue's limit, then its own quota."""
    queued = select(func.count()).select_from(TaskRow).where(TaskRow.status == TaskStatus.QUEUED)
    if key_queue_limit is not None:
        own = session.scalar(queued.where(TaskRow.app_key == app_key)) or 0
        if own >= key_queue_limit:
            raise QuotaExceeded(
                f"this key has {own} tasks queued, its share of the queue ({key_queue_limit} of {queue_limit})",
                retry_after=5,
            )
    depth = session.scalar(queued) or 0
    if depth >= queue_limit:
        raise QueueFull(depth, retry_after=5)
    if quota is not None:
        _check_quota(session, app_key, quota, now)


def _check_quota(session: Session, app_key: str, quota: Quota, now: float) -> None:
    mine = select(func.count()).select_from(TaskRow).where(TaskRow.app_key == app_key)
    if quota.max_concurrent is not None:
        active = session.scalar(mine.where(TaskRow.status.in_((TaskStatus.QUEUED, TaskStatus.PROCESSING)))) or 0
        if active >= quota.max_concurrent:
            raise QuotaExceeded(
                f"this key has {active} tasks queued or running, its limit ({quota.max_concurrent} at once)",
                retry_after=5,
            )
    if quota.per_minute is not None:
        window = now - 60
        recent = session.scalar(mine.where(TaskRow.created_at > window)) or 0
        if recent >= quota.per_minute:
            # The window frees a slot when the oldest task in it turns 60 s old.
            oldest = (
                session.scalar(
                    select(func.min(TaskRow.created_at)).where(TaskRow.app_key == app_key, TaskRow.created_at > window)
                )
                or now
            )
            raise QuotaExceeded(
                f"this key created {recent} tasks in the last minute, its limit ({quota.per_minute} a minute)",
                retry_after=max(1, math.ceil(oldest + 60 - now)),
            )
