"""Worker heartbeats and per-worker totals: who is alive, and how fast each one is (`/metrics`)."""

from __future__ import annotations

import time

from sqlalchemy import select, update

from ref2img.tasks.store.models import WorkerRow
from ref2img.tasks.store.database import Database


class Fleet:
    def __init__(self, db: Database):
        self._db = db

    def heartbeat(self, worker_id: str, presets: tuple[str, ...] = ()) -> None:
        """The worker is alive, holding `presets` (the generations it takes)."""
        now = time.time()
        held = ",".join(presets)
        with self._db.session() as session:
            row = session.get(WorkerRow, worker_id)
            if row is None:
                session.add(
                    WorkerRow(
                        id=worker_id, heartbeat_at=now, tasks_done=0, busy_s=0.0, steps=0, step_s=0.0, presets=held
                    )
                )
            else:
                row.heartbeat_at = now
                row.presets = held

    def task_done(self, worker_id: str, busy_s: float, steps: int, step_s: float) -> None:
        with self._db.session() as session:
            session.execute(
                update(WorkerRow)
                .where(WorkerRow.id == worker_id)
                .values(
                    tasks_done=WorkerRow.tasks_done + 1,
                    busy_s=WorkerRow.busy_s + busy_s,
                    steps=WorkerRow.steps + steps,
                    step_s=WorkerRow.step_s + step_s,
                    heartbeat_at=time.time(),
                )
            )

    def presets_held(self, within_s: float) -> dict[str, int]:
        """Preset -> how many live workers hold it (heartbeat within `within_s`)."""
        held: dict[str, int] = {}
        for row in self.alive(within_s):
            for preset in filter(None, (row.presets or "").split(",")):
                held[preset] = held.get(preset, 0) + 1
        return held

    def alive(self, within_s: float) -> list[WorkerRow]:
        with self._db.session(write=False) as session:
            return list(
                session.scalars(
                    select(WorkerRow).where(WorkerRow.heartbeat_at >= time.time() - within_s).order_by(WorkerRow.id)
                )
            )
