"""`ref2img worker`: one engine per process, taking tasks from the Redis queue (scale-out mode).

The same `Worker` as the embedded server's threads. Dramatiq acknowledges a message only once its
task has ended; while it runs, the lease is extended; if this process dies, the lease runs out and the
task goes to another worker (Dramatiq requeues the message, and the housekeeping resends it).
Callbacks are sent by the API nodes, which know the public URL their result links need.
"""

from __future__ import annotations

import logging
import signal
import threading

from ref2img.settings import ServerSettings
from ref2img.tasks.backend import Backend
from ref2img.tasks.execution.housekeeping import Housekeeper

log = logging.getLogger("ref2img.worker")


def run_worker_process(settings: ServerSettings) -> None:
    """Load the engine, then take tasks until SIGTERM or SIGINT. EngineError when the model cannot load."""
    if settings.embedded:
        raise ValueError("a worker needs --queue redis://… (embedded servers run their own workers)")
    backend = Backend(settings)
    # One route a process: the local queue (a GPU worker, one task at a time) or, with --engine tomoviee,
    # the cloud queue (a follower of many cloud tasks at once).
    ((route, threads),) = backend.routes.items()
    worker = backend.worker(route)
    # Leases say who is alive: a processing task is orphaned only once its lease has run out.
    housekeeper = Housekeeper(backend.store.tasks, backend.queue, settings.lease_s, owner_alive=lambda owner: True)
    try:
        backend.engine()  # load the model before taking work: one engine per process, loaded once
        worker.start()
        housekeeper.start()
        consumer = backend.queue.consume(worker, threads=threads)
        log.info("worker %s consuming", worker.owner)
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        stop.wait()
        worker.stop()  # its running job stops at its next step and goes back to the queue
        consumer.stop()
    finally:
        housekeeper.stop()
        worker.stop()
        backend.close()
