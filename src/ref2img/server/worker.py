"""`ref2img worker`: one engine per process, taking tasks from the Redis queue (scale-out mode).

The same runner as embedded mode. A message names a task; the worker claims it in the store (so a
duplicate delivery is dropped), runs it, and only then lets Dramatiq acknowledge the message. While
it runs, the lease is extended; if this process dies, the lease runs out and the task goes to
another worker (Dramatiq requeues the message, and the housekeeping resends it)."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import threading

from ref2img.server.services import ServerSettings, Services
from ref2img.tasks.runner import run_task

log = logging.getLogger("ref2img.worker")


class ScaleWorker:
    def __init__(self, settings: ServerSettings):
        if settings.embedded:
            raise ValueError("a worker needs --queue redis://… (embedded servers run their own workers)")
        self.services = Services(settings)
        if self.services.public_url is None:
            raise ValueError("--public-url: no API node has recorded its public URL in this store yet; start "
                             "`ref2img serve` with the same --db first, or pass --public-url")
        self.lease_s = settings.lease_s
        self.owner = f"worker-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self.services.background.extend = self._extend_leases  # the housekeeping thread calls it
        self.services.context.record = lambda busy, steps, step_s: self.services.store.worker_task_done(
            self.owner, busy, steps, step_s)

    def handle(self, task_id: str) -> None:
        svc = self.services
        task = svc.store.claim(task_id, self.owner, self.lease_s)
        if task is None:
            return  # running elsewhere or finished: a duplicate message
        with self._lock:
            self._running.add(task_id)
        try:
            run_task(task, self.owner, svc.context)
        finally:
            with self._lock:
                self._running.discard(task_id)

    def _extend_leases(self) -> None:
        with self._lock:
            running = list(self._running)
        self.services.store.extend_lease(running, self.owner, self.lease_s)
        self.services.store.worker_heartbeat(self.owner)

    def run(self) -> None:
        svc = self.services
        svc.engine()  # load the model before taking work: one engine per process, loaded once
        svc.store.worker_heartbeat(self.owner)
        svc.start()
        consumer = svc.queue.consume(self.handle, threads=1)
        log.info("worker %s consuming", self.owner)
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        stop.wait()
        consumer.stop()
        svc.stop()
