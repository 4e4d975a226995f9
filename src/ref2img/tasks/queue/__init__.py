"""Where accepted tasks wait for a worker: the `TaskQueue` interface, and its backends by URL scheme.

Two queues, one contract (tests/contract/test_queue.py). `embedded`: the store is the queue; worker
threads in the server's own process claim the oldest queued row (embedded.py). `redis://`,
`rediss://`: Dramatiq messages carry task ids to `ref2img worker` processes (redis_queue.py). Either
way the store stays the source of truth, and a worker claims a task in the store before it runs it.

A new backend is one module and one line in `QUEUES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ref2img.lifecycle import LOCAL

if TYPE_CHECKING:
    from ref2img.tasks.store.tasks import TaskStore


class TaskRunner(Protocol):
    """What a queue hands its tasks to (the `Worker`)."""

    route: str  # the tasks it takes
    presets: tuple[str, ...]  # the presets it holds: of the generations naming one, it takes only theirs

    def wait_for_engine(self) -> None: ...
    def run_next(self) -> bool:
        """Claim the oldest queued task of the route (and of its presets) and run it; False when none waits."""

    def run_by_id(self, task_id: str) -> None:
        """Run the named task unless it is running elsewhere or finished."""


class Consumer(Protocol):
    def stop(self) -> None: ...


class TaskQueue(Protocol):
    def send(self, task_id: str, route: str = LOCAL, preset: str | None = None) -> None:
        """Tell the workers of `route` (those holding `preset`, when the task names one) about a committed
        task. Never raises: a task the queue could not take waits in the store, and `redeliver` sends it
        later (accepted means kept)."""

    def consume(self, runner: TaskRunner, threads: int) -> Consumer:
        """Start handing tasks of `runner.route` (and `runner.presets`) to `runner` on `threads` threads."""

    def redeliver(self, lease_s: float) -> int:
        """Send again what the queue lost (housekeeping); returns how many."""

    def depth(self) -> int | None:
        """Messages waiting in the broker, or None when there is no broker (or it is away)."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class QueueOptions:
    url: str
    tasks: TaskStore
    task_timeout_s: float


def _embedded(options: QueueOptions) -> TaskQueue:
    from ref2img.tasks.queue.embedded import EmbeddedQueue

    return EmbeddedQueue(options.tasks)


def _redis(options: QueueOptions) -> TaskQueue:
    from ref2img.tasks.queue.redis_queue import RedisQueue  # dramatiq: the scale extra

    return RedisQueue(options.url, options.task_timeout_s, options.tasks)


# URL scheme -> the queue's factory (imported only when chosen: Dramatiq is an extra).
QUEUES: dict[str, Callable[[QueueOptions], TaskQueue]] = {
    "embedded": _embedded,
    "redis": _redis,
    "rediss": _redis,
}


def queue_scheme(url: str) -> str:
    """`embedded` (or `embedded://`), `redis://…`: the registry's key."""
    return url.partition("://")[0].lower() if "://" in url else url.lower()


def open_queue(url: str, tasks: TaskStore, task_timeout_s: float) -> TaskQueue:
    scheme = queue_scheme(url)
    factory = QUEUES.get(scheme)
    if factory is None:
        known = ", ".join(f"{name}://" if name != "embedded" else name for name in QUEUES)
        raise ValueError(f"--queue: unknown queue {scheme!r}; one of {known}")
    return factory(QueueOptions(url, tasks, task_timeout_s))


__all__ = ["QUEUES", "Consumer", "QueueOptions", "TaskQueue", "TaskRunner", "open_queue", "queue_scheme"]
