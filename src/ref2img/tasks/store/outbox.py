"""The callback outbox: one row per callback due, written in the transaction that ends its task.

A row names the task; its body is rendered by the sender on the first attempt (from the task as it
ended) and kept, so every retry sends the same bytes under the same `webhook-id`.
"""

from __future__ import annotations

import time

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ref2img.tasks.store.events import ChangeFeed
from ref2img.tasks.store.models import OutboxRow, TaskRow
from ref2img.tasks.store.database import Database


class Outbox:
    def __init__(self, db: Database):
        self._db = db
        self.due_feed = ChangeFeed()  # a callback became due: the sender waits on it

    def add(self, session: Session, task: TaskRow, now: float) -> None:
        """Queue the callback of `task`, inside the caller's transaction (the one that ends it)."""
        session.add(
            OutboxRow(
                id=f"msg_{task.id}",
                task_id=task.id,
                app_key=task.app_key,
                url=task.callback,
                payload=None,
                attempts=0,
                next_attempt_at=now,
                last_error="",
            )
        )

    def due(self, limit: int = 20) -> list[OutboxRow]:
        with self._db.session(write=False) as session:
            return list(
                session.scalars(
                    select(OutboxRow)
                    .where(
                        OutboxRow.delivered_at.is_(None),
                        OutboxRow.failed_at.is_(None),
                        OutboxRow.next_attempt_at <= time.time(),
                    )
                    .order_by(OutboxRow.next_attempt_at)
                    .limit(limit)
                )
            )

    def claim(self, limit: int = 20, lease_s: float = 60.0) -> list[OutboxRow]:
        """Due callbacks, each reserved for `lease_s` so that one node at a time attempts it."""
        now = time.time()
        with self._db.session() as session:
            due = (
                select(OutboxRow.id)
                .where(
                    OutboxRow.delivered_at.is_(None), OutboxRow.failed_at.is_(None), OutboxRow.next_attempt_at <= now
                )
                .order_by(OutboxRow.next_attempt_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            return list(
                session.scalars(
                    update(OutboxRow)
                    .where(OutboxRow.id.in_(due))
                    .values(next_attempt_at=now + lease_s)
                    .returning(OutboxRow)
                )
            )

    def keep_payload(self, message_id: str, payload: str) -> None:
        """The body rendered for the first attempt: later attempts send it again unchanged."""
        with self._db.session() as session:
            session.execute(
                update(OutboxRow).where(OutboxRow.id == message_id, OutboxRow.payload.is_(None)).values(payload=payload)
            )

    def delivered(self, message_id: str) -> None:
        with self._db.session() as session:
            session.execute(
                update(OutboxRow)
                .where(OutboxRow.id == message_id)
                .values(delivered_at=time.time(), attempts=OutboxRow.attempts + 1)
            )

    def failed(self, message_id: str, error: str, next_attempt_at: float | None) -> None:
        """A failed attempt: retried at `next_attempt_at`, or given up for good when it is None."""
        values: dict[str, object] = {"attempts": OutboxRow.attempts + 1, "last_error": error[:500]}
        if next_attempt_at is None:
            values["failed_at"] = time.time()
        else:
            values["next_attempt_at"] = next_attempt_at
        with self._db.session() as session:
            session.execute(update(OutboxRow).where(OutboxRow.id == message_id).values(**values))

    def get(self, message_id: str) -> OutboxRow | None:
        with self._db.session(write=False) as session:
            return session.get(OutboxRow, message_id)
