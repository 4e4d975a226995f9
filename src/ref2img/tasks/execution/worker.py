"""The one worker: the embedded server's threads and `ref2img worker` processes both run tasks here.

A worker has one owner id. It claims a task in the store before running it (so a duplicate queue
message is dropped), keeps the leases of the tasks it runs alive, and beats its heartbeat. If its
process dies, the leases run out and the housekeeping hands the tasks to another worker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets
import socket
import threading
import time

from ref2img.engines.base import EngineError
from ref2img.lifecycle import LOCAL, RunContext, run_task
from ref2img.tasks.store.fleet import Fleet
from ref2img.tasks.store.models import TaskRow
from ref2img.tasks.store.tasks import TaskStore

log = logging.getLogger("ref2img.worker")


class Worker:
    def __init__(
        self,
        tasks: TaskStore,
        fleet: Fleet,
        context: RunContext,
        *,
        kind: str,
        lease_s: float,
        record: bool = True,
        route: str = LOCAL,
        presets: tuple[str, ...] = (),
    ):
        """`record`: add each task's time to this worker's totals in the store (`/metrics` of a fleet);
        the embedded server skips that write, as it has one worker and no per-worker metrics.
        `route`: the tasks it takes, the local GPUs' or the cloud's (which it follows, GPU-free).
        `presets`: those it holds; it takes only the generations naming one of them, and its heartbeat
        tells the API nodes (a task for a preset no live worker holds says so while it waits)."""
        self.route = route
        self.presets = presets
        self.owner = f"{kind}-{socket.gethostname()[:32]}-{os.getpid()}-{secrets.token_hex(3)}"  # fits lease_owner
        self.lease_s = lease_s
        self._record = record
        self._tasks = tasks
        self._fleet = fleet
        self._stop = threading.Event()
        # A stopping worker's running job ends at its next step and goes back to the queue (runner.py).
        self._context = dataclasses.replace(context, stopping=self._stop.is_set)
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._keeper: threading.Thread | None = None

    def wait_for_engine(self) -> None:
        """Claim nothing until the engine has loaded: while it loads (seconds to minutes on the first
        start) tasks stay queued, status 1 with their position, rather than showing status 2 with no
        step run. A load that fails is reported by the runner, on each task, with its reason."""
        remote = self._context.remote_routes.get(self.route)
        with contextlib.suppress(EngineError):
            (remote.engine if remote is not None else self._context.engine)()

    def run_next(self) -> bool:
        """Claim the oldest queued task and run it; False when none waits (or this worker is stopping)."""
        if self._stop.is_set():
            return False
        held = self.presets if self.route == LOCAL else None  # a cloud follower takes every preset's task
        task = self._tasks.claim_next(self.owner, self.lease_s, self.route, held)
        if task is None:
            return False
        self._run(task)
        return True

    def run_by_id(self, task_id: str) -> None:
        """A queue message names a task: run it unless it is running elsewhere or finished."""
        if self._stop.is_set():
            return  # left queued: the housekeeping sends it again to a live worker
        task = self._tasks.claim(task_id, self.owner, self.lease_s)
        if task is not None:
            self._run(task)

    def _run(self, task: TaskRow) -> None:
        with self._lock:
            self._running.add(task.id)
        try:
            outcome = run_task(task, self.owner, self._context)
            if self._record and outcome.steps:
                self._fleet.task_done(self.owner, outcome.seconds, outcome.steps, outcome.step_seconds)
        except Exception:  # the store failed under the task (locked, disk full): the worker lives on,
            # and the task's lease runs out so it is claimed and run again.
            log.exception("task %s could not be finished; it runs again when its lease expires", task.id)
        finally:
            with self._lock:
                self._running.discard(task.id)

    def keep_alive(self) -> None:
        """Extend the leases of the tasks running here, and say this worker is alive."""
        with self._lock:
            running = list(self._running)
        self._tasks.extend_lease(running, self.owner, self.lease_s)
        self._fleet.heartbeat(self.owner, self.presets)

    def start(self) -> None:
        self.keep_alive()
        self._keeper = threading.Thread(target=self._keep_alive_loop, name="ref2img-leases", daemon=True)
        self._keeper.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Claim nothing more; a running job stops at its next step and goes back to the queue (one step
        of the engine: well under a second on a GPU). Waits for that, saying so, at most `timeout_s`."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        with self._lock:
            running = sorted(self._running)
        if running:
            log.info(
                "stopping: waiting for task %s to stop at its next step (it goes back to the queue)", ", ".join(running)
            )
        while running and time.monotonic() < deadline:
            time.sleep(0.05)
            with self._lock:
                running = sorted(self._running)
        if running:
            log.warning(
                "stopping: task %s did not stop within %.0f s; its lease runs out and it runs again",
                ", ".join(running),
                timeout_s,
            )
        if self._keeper is not None:
            self._keeper.join(5)

    def _keep_alive_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.keep_alive()
            except Exception:  # keep the leases thread alive through store hiccups
                log.exception("could not extend the leases")
