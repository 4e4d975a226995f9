"""The queue contract: every `TaskQueue` backend (embedded, Redis) must pass the same suite, as the
store's backends do (tests/contract/test_store.py). A new backend is done when it passes here.

The runner is a small `TaskRunner` that claims in the store as the real `Worker` does and records
what it ran; the queue must hand it each committed task of its route, once, after the engine has
loaded, and never a task of another route.
"""

from __future__ import annotations

import threading
import time

import pytest

from ref2img.lifecycle import CLOUD, LOCAL
from ref2img.protocol import TaskStatus
from ref2img.tasks.queue import QUEUES, open_queue, queue_scheme
from ref2img.tasks.store import Store

LEASE_S = 30.0


class RecordingRunner:
    """A `TaskRunner`: claims like the `Worker`, then finishes the task at once and remembers it."""

    def __init__(
        self, store: Store, route: str = LOCAL, engine_ready: threading.Event | None = None, presets=("sdxl",)
    ):
        self.route = route
        self.presets = presets
        self.owner = f"contract-{route}-{'-'.join(presets)}"
        self.store = store
        self.ran: list[str] = []
        self.engine_ready = engine_ready or threading.Event()
        if engine_ready is None:
            self.engine_ready.set()
        self.waited_for_engine = threading.Event()

    def wait_for_engine(self) -> None:
        self.engine_ready.wait(10)
        self.waited_for_engine.set()

    def run_next(self) -> bool:
        task = self.store.tasks.claim_next(self.owner, LEASE_S, self.route, self.presets)
        if task is None:
            return False
        self._run(task.id)
        return True

    def run_by_id(self, task_id: str) -> None:
        task = self.store.tasks.claim(task_id, self.owner, LEASE_S)
        if task is not None:
            self._run(task.id)

    def _run(self, task_id: str) -> None:
        assert self.engine_ready.is_set(), "a task was handed over before the engine loaded"
        self.ran.append(task_id)
        self.store.tasks.finish(task_id, self.owner, TaskStatus.SUCCEEDED, result=[])


@pytest.fixture
def store(tmp_path):
    instance = Store(f"sqlite:///{tmp_path / 'store.db'}")
    yield instance
    instance.close()


@pytest.fixture(params=["embedded", "redis"])
def queue_url(request):
    if request.param == "embedded":
        return "embedded"
    return request.getfixturevalue("redis_server").url


@pytest.fixture
def queue(queue_url, store):
    instance = open_queue(queue_url, store.tasks, task_timeout_s=60)
    yield instance
    instance.close()


def commit(store: Store, route: str = LOCAL, preset: str | None = None) -> str:
    task, _ = store.tasks.create_idempotent(
        app_key="ak_q",
        kind="img2img",
        request={"prompt": "p"},
        params=None,
        callback=None,
        idempotency_key=None,
        timeout_s=600,
        queue_limit=100,
        route=route,
        preset=preset,
    )
    return task.id


def wait_for(check, timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_a_sent_task_is_run_once(queue, store):
    runner = RecordingRunner(store)
    consumer = queue.consume(runner, threads=2)
    try:
        ids = [commit(store) for _ in range(5)]
        for task_id in ids:
            queue.send(task_id, LOCAL)
        wait_for(lambda: len(runner.ran) >= len(ids))
        time.sleep(0.2)  # room for a second delivery, which must not run anything
        assert sorted(runner.ran) == sorted(ids)
        assert all(store.tasks.get(task_id).status == TaskStatus.SUCCEEDED for task_id in ids)
    finally:
        consumer.stop()


def test_a_task_goes_only_to_the_runners_of_its_route(queue, store):
    local, cloud = RecordingRunner(store, LOCAL), RecordingRunner(store, CLOUD)
    consumers = [queue.consume(local, threads=1), queue.consume(cloud, threads=1)]
    try:
        to_local, to_cloud = commit(store, LOCAL), commit(store, CLOUD)
        queue.send(to_local, LOCAL)
        queue.send(to_cloud, CLOUD)
        wait_for(lambda: local.ran and cloud.ran)
        assert (local.ran, cloud.ran) == ([to_local], [to_cloud])
    finally:
        for consumer in consumers:
            consumer.stop()


def test_a_generation_naming_a_preset_goes_only_to_a_runner_holding_it(queue, store):
    sdxl, zimage = RecordingRunner(store, presets=("sdxl",)), RecordingRunner(store, presets=("zimage-turbo",))
    consumers = [queue.consume(sdxl, threads=1), queue.consume(zimage, threads=1)]
    try:
        for_sdxl = [commit(store, preset="sdxl") for _ in range(3)]
        for_zimage = [commit(store, preset="zimage-turbo") for _ in range(3)]
        for task_id in for_sdxl:
            queue.send(task_id, LOCAL, "sdxl")
        for task_id in for_zimage:
            queue.send(task_id, LOCAL, "zimage-turbo")
        wait_for(lambda: len(sdxl.ran) + len(zimage.ran) == 6)
        assert (sorted(sdxl.ran), sorted(zimage.ran)) == (sorted(for_sdxl), sorted(for_zimage))
        orphan = commit(store, preset="flux")  # no runner holds it: it waits, queued
        queue.send(orphan, LOCAL, "flux")
        time.sleep(0.3)
        assert store.tasks.get(orphan).status == TaskStatus.QUEUED
    finally:
        for consumer in consumers:
            consumer.stop()


def test_nothing_is_handed_over_before_the_engine_loaded(queue, store):
    ready = threading.Event()
    runner = RecordingRunner(store, engine_ready=ready)
    consumer = queue.consume(runner, threads=1)
    try:
        task_id = commit(store)
        queue.send(task_id, LOCAL)
        time.sleep(0.3)
        assert runner.ran == [] and store.tasks.get(task_id).status == TaskStatus.QUEUED
        ready.set()
        wait_for(lambda: runner.ran == [task_id])
        assert runner.waited_for_engine.is_set()
    finally:
        consumer.stop()


def test_a_stopped_consumer_takes_nothing_more(queue, store):
    runner = RecordingRunner(store)
    consumer = queue.consume(runner, threads=1)
    first = commit(store)
    queue.send(first, LOCAL)
    wait_for(lambda: runner.ran == [first])
    consumer.stop()
    second = commit(store)
    queue.send(second, LOCAL)
    time.sleep(0.3)
    assert runner.ran == [first] and store.tasks.get(second).status == TaskStatus.QUEUED


def test_depth_and_redeliver_answer_without_a_consumer(queue, store):
    depth = queue.depth()
    assert depth is None or depth >= 0
    assert queue.redeliver(LEASE_S) >= 0


def test_every_registered_scheme_opens(store, redis_server):
    urls = {"embedded": "embedded", "redis": redis_server.url, "rediss": redis_server.url}
    assert set(QUEUES) == set(urls), "a new backend needs its URL here and a param of `queue_url`"
    for scheme in QUEUES:
        assert queue_scheme(urls[scheme]) in QUEUES
    with pytest.raises(ValueError, match=r"--queue: unknown queue 'kafka'; one of embedded, redis://, rediss://"):
        open_queue("kafka://broker:9092", store.tasks, 60)


def test_a_send_the_broker_missed_is_run_after_redeliver(store, redis_server):
    """Redis away when a task is sent: `send` does not raise, the task waits in the store, and the
    housekeeping's `redeliver` sends it once Redis is back (accepted means kept)."""
    queue = open_queue(redis_server.url, store.tasks, task_timeout_s=60)
    runner = RecordingRunner(store)
    try:
        redis_server.stop()
        task_id = commit(store)
        queue.send(task_id, LOCAL)  # must not raise
        assert store.tasks.unsent_queued(older_than_s=float("inf")) == [(task_id, LOCAL, None)]
        redis_server.start()
        consumer = queue.consume(runner, threads=1)
        try:
            assert queue.redeliver(LEASE_S) == 1
            wait_for(lambda: runner.ran == [task_id])
        finally:
            consumer.stop()
    finally:
        queue.close()
